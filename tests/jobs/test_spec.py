from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs.spec import (
    JobSpec,
    apply_overrides,
    check_against_columns,
    check_spec,
    effective_spec,
    feature_columns,
    resolve_path,
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
    locs = {tuple(e["loc"]) for e in exc.value.errors()}
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
    assert trial.model.hidden_sizes == [8]
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
