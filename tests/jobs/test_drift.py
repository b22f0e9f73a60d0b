"""Reference profiles and PSI: the same distribution stays under 0.1, a shift goes over 0.2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from jobs.drift import EPSILON, OTHER, TOP_CATEGORIES, psi, reference_profile


def _train(n: int = 20_000, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "age": rng.normal(40, 10, n),
        "colour": rng.choice(np.array(["red", "green", "blue"], object), n, p=[0.5, 0.3, 0.2]),
    }


def test_same_distribution_is_stable_and_a_shift_is_not() -> None:
    profile = reference_profile(_train(), {"age": "numeric", "colour": "categorical"})
    assert json.loads(json.dumps(profile)) == profile  # plain JSON, for bundle.json
    age = profile["features"]["age"]
    assert age["kind"] == "numeric" and len(age["edges"]) == 9
    assert math.isclose(sum(age["fractions"]) + age["missing"], 1.0)
    live = _train(2_000, seed=1)
    assert psi(age, live["age"]) < 0.1
    assert psi(profile["features"]["colour"], live["colour"]) < 0.1
    shifted = np.random.default_rng(2).normal(55, 10, 2_000)
    assert psi(age, shifted) > 0.2
    flipped = np.random.default_rng(3).choice(
        np.array(["red", "green", "blue"], object), 2_000, p=[0.1, 0.3, 0.6]
    )
    assert psi(profile["features"]["colour"], flipped) > 0.2


def test_new_categories_fall_into_other_and_raise_the_psi() -> None:
    profile = reference_profile({"colour": _train()["colour"]})
    colour = profile["features"]["colour"]
    assert colour["kind"] == "categorical" and colour["other"] == 0.0
    unseen = ["purple"] * 300 + ["red"] * 700
    value = psi(colour, unseen)
    # 30 % of rows in a bin training had (almost) none of: (0.3 - eps) * ln(0.3 / eps) alone.
    assert value > (0.3 - EPSILON) * math.log(0.3 / EPSILON)
    # Values sent as numbers match categories read as text.
    numbers = reference_profile({"code": np.array(["1", "2", "2", "3"] * 100, object)})
    assert psi(numbers["features"]["code"], [1, 2, 2.0, 3] * 50) < 1e-9


def test_the_top_categories_are_kept_and_the_rest_is_other() -> None:
    values = np.array([f"c{i}" for i in range(80) for _ in range(100 - i)], object)
    colour = reference_profile({"c": values})["features"]["c"]
    assert len(colour["categories"]) == TOP_CATEGORIES and "c0" in colour["categories"]
    assert "c79" not in colour["categories"] and colour["other"] > 0
    assert OTHER == "__other__"
    assert psi(colour, values) < 1e-9


def test_missing_values_are_a_bin_of_their_own() -> None:
    x = np.random.default_rng(0).normal(0, 1, 10_000)
    x[:1000] = np.nan
    age = reference_profile({"x": x}, {"x": "numeric"})["features"]["x"]
    assert math.isclose(age["missing"], 0.1)
    live = list(np.random.default_rng(1).normal(0, 1, 900)) + [None] * 100
    assert psi(age, live) < 0.1
    # Half the live rows missing where a tenth were: drift, even with the rest unchanged.
    assert psi(age, list(np.random.default_rng(2).normal(0, 1, 500)) + [None] * 500) > 0.2
    cats = reference_profile({"c": np.array(["a", "b", None] * 100, object)})["features"]["c"]
    assert math.isclose(cats["missing"], 1 / 3)
    assert psi(cats, ["a", "b", None] * 10) < 1e-9
    assert psi(cats, ["a", "b"] * 10) > 0.2


def test_few_distinct_values_merge_bins_and_arrays_are_skipped() -> None:
    table = pa.table(
        {
            "flag": [0, 0, 0, 0, 0, 0, 0, 1, 1, 1] * 50,
            "image": [[[0.0, 1.0]]] * 500,
            "sex": ["F", "M"] * 250,
        }
    )
    profile = reference_profile(table)
    assert set(profile["features"]) == {"flag", "sex"} and profile["rows"] == 500
    flag = profile["features"]["flag"]
    assert flag["edges"] == [0.0, 1.0] and np.allclose(flag["fractions"], [0.7, 0.3, 0.0])
    assert psi(flag, [True, False, False, False, False, False, False, True, True, False]) < 1e-9
    assert psi(flag, [1] * 10) > 0.2
    assert math.isnan(psi(flag, []))


def test_the_job_profiles_its_raw_training_inputs_and_sensitive_features(
    adult_small: Path, tmp_path: Path
) -> None:
    """prepare() profiles the training split before preprocessing (ages in years, text
    categories), sensitive features included; a bundle carries it in bundle.json."""
    from jobs.bundle import BundleError, OutputHead, read_manifest, save_bundle
    from jobs.models import build_model
    from jobs.prepare import prepare, records
    from jobs.spec import JobSpec, MLPSpec

    spec = JobSpec.model_validate(
        {
            "name": "p",
            "dataset": {"id": "d", "target": "income"},
            "audit": {"sensitive_features": ["sex", "race"]},
        }
    )
    prepared = prepare(spec, str(adult_small))
    ref = prepared.reference
    assert ref["rows"] == prepared.split_sizes["train"]
    inputs = set(prepared.preprocessor.input_columns)
    assert set(ref["features"]) == inputs | {"sex", "race"}
    age = ref["features"]["age"]
    assert age["kind"] == "numeric" and age["min"] >= 17 and age["max"] <= 90
    assert set(ref["features"]["sex"]["categories"]) == {"Male", "Female"}
    # The test split comes from the same rows: no drift on any input.
    test_rows = records(prepared.test_features, prepared.split_sizes["test"])
    for name in inputs:
        assert psi(ref["features"][name], [r[name] for r in test_rows]) < 0.1, name

    model = build_model(MLPSpec(hidden_sizes=[4]), prepared.preprocessor.example_shape, 2)
    head = OutputHead("classification", prepared.classes)
    folder = tmp_path / "b"
    digest = save_bundle(
        folder, model.state_dict(), MLPSpec(hidden_sizes=[4]), prepared.preprocessor, head,
        test_rows[:2], {}, reference=ref,
    )  # fmt: skip
    assert read_manifest(folder, digest)["reference"] == json.loads(json.dumps(ref))
    with pytest.raises(BundleError, match="digest on record"):
        read_manifest(folder, "0" * 64)
