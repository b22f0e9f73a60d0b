from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from jobs.spec import (
    JobSpec,
    MLPSpec,
    SplitSpec,
    apply_overrides,
    check_against_columns,
    check_model_inputs,
    check_spec,
    effective_spec,
    feature_columns,
    resolve_path,
    validation_errors,
)

BASE = {"name": "t", "dataset": {"id": "ds_x", "target": "y"}}


def spec(**parts: object) -> JobSpec:
    return JobSpec.model_validate({**BASE, **parts})


def test_defaults_are_a_complete_spec() -> None:
    s = spec()
    assert s.model.architecture == "mlp"
    assert s.search.resolved_mode == "max"
    assert s.audit.thresholds == {"demographic_parity_ratio": 0.8}


def test_every_bad_field_is_reported_by_path() -> None:
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate(
            {
                "name": "bad name!",
                "dataset": {"id": "d", "target": "y", "split": {"test": 1.5}},
                "model": {"architecture": "resnet"},
                "training": {"learning_rate": -1, "typo": 1},
            }
        )
    locs = {e.loc for e in validation_errors(exc.value)}
    assert ("name",) in locs
    assert ("dataset", "split", "test") in locs
    assert ("model", "architecture") in locs
    assert ("training", "learning_rate") in locs
    assert ("training", "typo") in locs


@pytest.mark.parametrize(
    "domain",
    [
        {"choice": []},
        {"uniform": [1, 0]},
        {"loguniform": [0, 1]},
        {"uniform": [0, 1], "choice": [1]},
        {},
    ],
)
def test_bad_domains_are_rejected(domain: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        spec(search={"space": {"training.learning_rate": domain}})


def test_split_must_leave_training_rows() -> None:
    with pytest.raises(ValidationError, match="training"):
        spec(dataset={"id": "d", "target": "y", "split": {"validation": 0.5, "test": 0.45}})


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("training.learning_rate", True),
        ("model.hidden_sizes", True),
        ("training.early_stopping.patience", True),
        ("training.nope", False),
        ("training", False),
        ("dataset.target", False),
        ("search.num_trials", False),
    ],
)
def test_search_paths(path: str, ok: bool) -> None:
    assert (resolve_path(path) is None) is ok


def test_search_values_are_checked_against_their_field() -> None:
    errors = check_spec(
        spec(
            search={
                "space": {
                    "training.batch_size": {"choice": [32, 0]},
                    "model.activation": {"choice": ["relu", "swish"]},
                    "training.nope": {"uniform": [0, 1]},
                }
            }
        )
    )
    by_path = {e.loc[-1]: e.msg for e in errors}
    assert "0" in by_path["training.batch_size"]
    assert "swish" in by_path["model.activation"]
    assert "names no field" in by_path["training.nope"]


def test_mode_must_match_metric() -> None:
    errors = check_spec(spec(search={"metric": "val_loss", "mode": "max"}))
    assert [e.loc for e in errors] == [("search", "mode")]


def test_columns_are_checked() -> None:
    s = spec(audit={"sensitive_features": ["sex", "race"]})
    errors = check_against_columns(s, ["x", "sex"])
    assert {e.loc for e in errors} == {("dataset", "target"), ("audit", "sensitive_features", 1)}


def test_sensitive_features_are_not_inputs_unless_asked() -> None:
    columns = ["a", "sex", "y"]
    assert feature_columns(spec(audit={"sensitive_features": ["sex"]}), columns) == ["a"]
    asked = spec(audit={"sensitive_features": ["sex"], "use_as_features": True})
    assert feature_columns(asked, columns) == ["a", "sex"]


def test_overrides_make_the_trial_spec() -> None:
    s = spec()
    trial = effective_spec(s, {"training.learning_rate": 0.05, "model.hidden_sizes": [8]})
    assert trial.training.learning_rate == 0.05
    assert isinstance(trial.model, MLPSpec) and trial.model.hidden_sizes == [8]
    assert s.training.learning_rate == 1e-3  # the job's spec is untouched
    nested = apply_overrides({}, {"training.early_stopping.patience": 2})
    assert nested == {"training": {"early_stopping": {"patience": 2}}}


def test_json_schema_documents_fields() -> None:
    schema = JobSpec.model_json_schema()
    training = schema["$defs"]["TrainingSpec"]["properties"]
    assert training["learning_rate"]["description"]


def test_shipped_examples_are_valid_specs() -> None:
    from pathlib import Path

    import yaml

    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        spec = JobSpec.model_validate(yaml.safe_load(path.read_text()))
        assert check_spec(spec) == [], path


def test_errors_inside_an_architecture_are_reported_at_the_spec_path() -> None:
    with pytest.raises(ValidationError) as exc:
        spec(model={"architecture": "cnn", "dropout": 3, "kernel_size": 4})
    locs = {e.loc for e in validation_errors(exc.value)}
    assert locs == {("model", "dropout"), ("model", "kernel_size")}
    with pytest.raises(ValidationError, match="must divide d_model"):
        spec(model={"architecture": "transformer", "d_model": 30, "num_heads": 4})


def test_the_task_sets_the_default_metric_and_autoencoders_detect_anomalies() -> None:
    assert spec().search.metric is None  # settled once the target is seen
    assert spec(task="regression").search.metric == "val_rmse"
    assert spec(task="regression").search.resolved_mode == "min"
    auto = spec(model={"architecture": "autoencoder"})
    assert (auto.task, auto.search.metric) == ("anomaly_detection", "val_auc")
    assert spec().with_task("regression").search.metric == "val_rmse"
    with pytest.raises(ValidationError, match="autoencoder"):
        spec(task="classification", model={"architecture": "autoencoder"})
    with pytest.raises(ValidationError, match="autoencoder"):
        spec(task="anomaly_detection")


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"task": "regression", "search": {"metric": "val_accuracy"}}, ("search", "metric")),
        ({"task": "classification", "training": {"loss": "mse"}}, ("training", "loss")),
        (
            {"task": "regression", "training": {"class_weights": "balanced"}},
            ("training", "class_weights"),
        ),
        (
            {"task": "regression", "training": {"early_stopping": {"metric": "val_f1_macro"}}},
            ("training", "early_stopping", "metric"),
        ),
        (
            {"task": "regression", "preprocessing": {"augmentation": {"mixup_alpha": 0.2}}},
            ("preprocessing", "augmentation", "mixup_alpha"),
        ),
    ],
)
def test_options_that_do_not_fit_the_task_are_refused(
    fields: dict[str, Any], loc: tuple[str, ...]
) -> None:
    assert [e.loc for e in check_spec(spec(**fields))] == [loc]


def test_search_paths_follow_the_chosen_architecture() -> None:
    cnn = spec(model={"architecture": "cnn"})
    assert resolve_path("model.channels", cnn) is None
    assert "of model 'cnn'" in (resolve_path("model.hidden_sizes", cnn) or "")
    assert resolve_path("training.lr_schedule.gamma") is None
    assert resolve_path("preprocessing.augmentation.noise_std") is None
    ok = spec(
        model={"architecture": "gru"},
        search={
            "space": {
                "model.hidden_size": {"choice": [8, 16]},
                "model.architecture": {"choice": ["lstm", "gru"]},
            }
        },
    )
    assert check_spec(ok) == []
    bad = spec(search={"space": {"model.architecture": {"choice": ["mlp", "cnn"]}}})
    assert [e.loc for e in check_spec(bad)] == [("search", "space", "model.architecture")]


KINDS: dict[str, str | None] = {"x": "numeric", "img": "array", "seq": "array", "y": "categorical"}
SHAPES: dict[str, list[int] | None] = {"x": None, "img": [8, 8], "seq": [32], "y": None}


@pytest.mark.parametrize(
    ("model", "features", "loc", "match"),
    [
        ({"architecture": "cnn"}, ["x"], ("model", "architecture"), "needs an image column"),
        ({"architecture": "lstm"}, ["x"], ("model", "architecture"), "needs a sequence column"),
        ({"architecture": "cnn"}, ["img", "x"], ("dataset", "features"), "exactly one array"),
        ({"architecture": "cnn"}, ["seq"], ("dataset", "features"), "reads 2-D or 3-D"),
        ({"architecture": "gru"}, ["seq"], None, None),
        ({"architecture": "cnn"}, ["img"], None, None),
        ({"architecture": "transformer"}, ["x"], None, None),
        ({"architecture": "mlp"}, ["img", "x"], None, None),
    ],
)
def test_architectures_are_checked_against_the_input_columns(
    model: dict[str, Any], features: list[str], loc: tuple[str, ...] | None, match: str | None
) -> None:
    s = spec(model=model, dataset={"id": "d", "target": "y", "features": features})
    errors = check_model_inputs(s, KINDS, SHAPES)
    if loc is None:
        assert errors == []
    else:
        assert match is not None
        assert [e.loc for e in errors] == [loc] and match in errors[0].msg


def test_image_augmentation_needs_a_cnn() -> None:
    s = spec(preprocessing={"augmentation": {"flip": True, "noise_std": 0.1}})
    errors = check_model_inputs(s, {"x": "numeric", "y": "categorical"}, {})
    assert [e.loc for e in errors] == [("preprocessing", "augmentation", "flip")]


def test_split_methods_need_their_column() -> None:
    with pytest.raises(ValidationError, match="needs 'column'"):
        spec(dataset={"id": "d", "target": "y", "split": {"method": "group"}})
    s = spec(dataset={"id": "d", "target": "y", "split": {"method": "time", "column": "t"}})
    assert feature_columns(s, ["a", "t", "y"]) == ["a"]
    assert SplitSpec(stratify=False).resolved_method("classification") == "random"
    assert SplitSpec().resolved_method("regression") == "random"


def test_settling_the_task_keeps_what_the_user_left_out() -> None:
    grid = spec(
        search={"algorithm": "grid", "space": {"training.epochs": {"grid": [1, 2]}}}
    ).with_task("regression")
    assert check_spec(grid) == []
    assert "num_trials" not in grid.search.model_fields_set


def test_sequence_windows_need_numeric_features_and_a_sequence_model() -> None:
    seq = {"time_column": "t", "id_column": "sensor", "window": 8}
    kinds: dict[str, str | None] = {
        "t": "numeric",
        "sensor": "categorical",
        "x": "numeric",
        "y": "categorical",
        "note": "categorical",
    }
    ok = spec(
        model={"architecture": "lstm"},
        dataset={"id": "d", "target": "y", "features": ["x"], "sequence": seq},
    )
    assert check_model_inputs(ok, kinds, {}) == []
    assert feature_columns(
        spec(dataset={"id": "d", "target": "y", "sequence": seq}), list(kinds)
    ) == ["x", "note"]
    bad = spec(model={"architecture": "cnn"}, dataset={"id": "d", "target": "y", "sequence": seq})
    assert {e.loc for e in check_model_inputs(bad, kinds, {})} == {
        ("model", "architecture"),
        ("dataset", "features"),
    }
    with pytest.raises(ValidationError, match="target cannot be"):
        spec(dataset={"id": "d", "target": "t", "sequence": seq})


@pytest.mark.parametrize(
    ("promotion", "loc"),
    [
        ({"compress": "int4"}, ("promotion", "compress")),
        ({"prune": 0}, ("promotion", "prune")),
        ({"prune": 1}, ("promotion", "prune")),
        ({"prune": "lots"}, ("promotion", "prune")),
    ],
)
def test_compression_options_are_checked_by_path(promotion: dict[str, Any], loc: tuple) -> None:
    with pytest.raises(ValidationError) as exc:
        spec(promotion=promotion)
    assert [e.loc for e in validation_errors(exc.value)] == [loc]


def test_compression_is_asked_by_compress_or_prune() -> None:
    assert not spec().promotion.compression_requested
    assert spec(promotion={"compress": "dynamic_int8"}).promotion.compression_requested
    both = spec(promotion={"compress": "dynamic_int8", "prune": 0.3}).promotion
    assert both.compression_requested and both.prune == 0.3
    assert spec(promotion={"prune": 0.5}).promotion.compression_requested
    props = JobSpec.model_json_schema()["$defs"]["PromotionSpec"]["properties"]
    assert "int8" in props["compress"]["description"]
    assert "L1" in props["prune"]["description"]
