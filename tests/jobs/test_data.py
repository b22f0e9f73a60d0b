from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data import DataError, split_indices
from jobs.preprocess import Preprocessor
from jobs.spec import PreprocessingSpec
from jobs.tasks import encode_target


def test_split_is_seeded_disjoint_and_complete() -> None:
    a = split_indices(1000, 0.2, 0.1, seed=3)
    b = split_indices(1000, 0.2, 0.1, seed=3)
    c = split_indices(1000, 0.2, 0.1, seed=4)
    assert all(
        np.array_equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True)
    )
    assert not np.array_equal(a.test, c.test)
    every = np.concatenate([a.train, a.validation, a.test])
    assert sorted(every.tolist()) == list(range(1000))
    assert (len(a.validation), len(a.test)) == (200, 100)


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    s = split_indices(1000, 0.2, 0.2, seed=0, stratify_by=labels)
    for part in (s.train, s.validation, s.test):
        assert labels[part].mean() == pytest.approx(0.1, abs=0.005)


def test_preprocessor_is_fitted_on_what_it_is_given() -> None:
    cols = {
        "x": np.array([1.0, 2.0, math.nan, 5.0]),
        "c": np.array(["a", "b", None, "a"], dtype=object),
    }
    pre = Preprocessor.fit(cols, {"x": "numeric", "c": "categorical"})
    num = pre.numeric[0]
    assert num.fill == 2.0  # median of the present values
    assert num.center == pytest.approx(np.mean([1, 2, 5]))
    assert pre.categorical[0].categories == ["a", "b"]
    out = pre.transform(
        {"x": np.array([math.nan, 1.0]), "c": np.array(["b", "never-seen"], dtype=object)}
    )
    assert out.shape == (2, 3)
    assert out[0, 0] == pytest.approx((2.0 - num.center) / num.scale)
    assert out[0, 1:].tolist() == [0.0, 1.0]
    assert out[1, 1:].tolist() == [0.0, 0.0]  # unseen category: all zeros


def test_preprocessor_round_trips_through_json() -> None:
    cols = {"x": np.array([1.0, 3.0]), "c": np.array(["a", "b"], dtype=object)}
    pre = Preprocessor.fit(
        cols, {"x": "numeric", "c": "categorical"}, PreprocessingSpec(scale="minmax")
    )
    again = Preprocessor.from_json(pre.to_json())
    assert np.array_equal(pre.transform(cols), again.transform(cols))


def test_records_are_validated() -> None:
    pre = Preprocessor.fit(
        {"x": np.array([1.0, 2.0]), "c": np.array(["a", "b"], dtype=object)},
        {"x": "numeric", "c": "categorical"},
    )
    cols = pre.columns_from_records([{"x": None, "c": None}, {"x": 3, "c": "z"}])
    assert math.isnan(cols["x"][0])
    with pytest.raises(DataError, match="missing column 'c'"):
        pre.columns_from_records([{"x": 1}])
    with pytest.raises(DataError, match="must be a number"):
        pre.columns_from_records([{"x": "one", "c": "a"}])
    with pytest.raises(DataError, match="non-empty"):
        pre.columns_from_records([])


def test_labels_keep_their_type() -> None:
    labels = encode_target(np.array([3, 1, 3, 2], dtype=object), "classification", None, "y")
    assert labels.classes == [1, 2, 3]
    assert labels.codes.tolist() == [2, 0, 2, 1]


def test_a_long_table_becomes_windows_of_one_series_each(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.prepare import prepare
    from jobs.spec import JobSpec

    rng = np.random.default_rng(0)
    rows = []
    for sensor in range(12):
        kind = sensor % 2  # odd sensors oscillate
        for t in range(20):
            value = np.sin(t * 2.0) * kind + rng.normal(0, 0.1)
            rows.append(
                {
                    "sensor": f"s{sensor}",
                    "t": 19 - t,
                    "x": value,
                    "y": 2 * value,
                    "state": ["calm", "wavy"][kind],
                }
            )
    path = tmp_path / "long.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    spec = JobSpec.model_validate(
        {
            "name": "w",
            "dataset": {
                "id": "d",
                "target": "state",
                "sequence": {"id_column": "sensor", "time_column": "t", "window": 5, "stride": 5},
            },
            "model": {"architecture": "gru"},
        }
    )
    p = prepare(spec, str(path))
    # 12 sensors x 4 windows of 5 steps, each [5][2] (x, y), one channel per feature
    total = sum(p.split_sizes.values())
    assert total == 48 and p.train.x_train.shape[1:] == (5, 2)
    # the split is by sensor: a window's sensor never appears in two splits
    assert p.split_sizes["test"] % 4 == 0 and p.split_sizes["validation"] % 4 == 0
    with pytest.raises(DataError, match="longer than every series"):
        prepare(
            spec.model_copy(
                update={
                    "dataset": spec.dataset.model_copy(
                        update={"sequence": spec.dataset.sequence.model_copy(update={"window": 50})}  # type: ignore[union-attr]
                    )
                }
            ),
            str(path),
        )


def test_the_job_start_quality_report_covers_what_the_job_reads() -> None:
    from jobs.prepare import start_quality
    from jobs.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "name": "q",
            "dataset": {"id": "d", "target": "income", "features": ["age", "workclass"]},
            "audit": {"sensitive_features": ["race"]},
        }
    )
    q = start_quality(spec, "builtin://adult")
    assert set(q["missing_rate"]) == {"age", "workclass", "income", "race"}
    assert q["rows"] == 48842 and q["missing_rate"]["workclass"] > 0.05
    assert all("message" in w for w in q["warnings"])


def test_a_job_on_infinite_values_fails_before_its_search_naming_the_column(
    tmp_path: Path,
) -> None:
    # Before, the infinities reached the network and the job failed with "loss became nan;
    # try a lower training.learning_rate".
    rows = [{"x": float(i), "y": float(i % 3), "label": i % 2} for i in range(40)]
    rows[7]["x"] = float("inf")
    rows[9]["x"] = float("-inf")
    path = tmp_path / "inf.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    from jobs.prepare import prepare
    from jobs.spec import JobSpec

    spec = JobSpec.model_validate({"name": "i", "dataset": {"id": "d", "target": "label"}})
    with pytest.raises(DataError, match=r"column 'x' is infinite in 2 row\(s\) \(7, 9\)"):
        prepare(spec, str(path))
