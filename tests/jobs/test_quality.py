"""The data quality report on tables small enough to count by hand."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from jobs.data import DataError
from jobs.datasets import BUILTIN
from jobs.quality import quality_report
from jobs.tasks import infer_task

NAN = float("nan")


@pytest.fixture
def table() -> pa.Table:
    # row:    0      1      2      3      4      5
    return pa.table(
        {
            "age": [30.0, NAN, 40.0, 40.0, None, 40.0],  # NaN and null are both missing
            "sex": ["F", "M", "  ", "M", "M", "M"],  # blank text is missing
            "note": ["a", None, "", "b", None, "b"],
            "empty": pa.array([None] * 6, pa.float64()),
            "const": ["x"] * 6,
            "label": [1, 0, 0, 0, 0, 0],
            "img": [[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [5.0, 6.0], [3.0, 4.0], [5.0, 6.0]],
        }
    )


def test_hand_counted_report(table: pa.Table) -> None:
    q = quality_report(table, target="label", min_group_count=3)
    assert (q["num_rows"], q["num_columns"], q["min_group_count"]) == (6, 7, 3)
    # Row 5 equals row 3 in every column. Row 4 is not row 1 again: its age is null where
    # row 1 has NaN, two different stored values.
    assert q["duplicate_rows"] == 1
    assert q["constant_columns"] == ["empty", "const"]
    cols = {c["name"]: c for c in q["columns"]}
    assert cols["age"] == {
        "name": "age",
        "missing": 2,
        "missing_rate": 2 / 6,
        "distinct": 2,
        "infinite": 0,
    }
    assert cols["sex"] == {
        "name": "sex",
        "missing": 1,
        "missing_rate": 1 / 6,
        "distinct": 2,
        "infinite": 0,
        "groups": [{"value": "M", "count": 4}, {"value": "F", "count": 1}],
    }
    assert cols["note"]["missing"] == 3 and cols["note"]["missing_rate"] == 0.5
    assert cols["note"]["groups"] == [{"value": "b", "count": 2}, {"value": "a", "count": 1}]
    assert (cols["empty"]["missing"], cols["empty"]["missing_rate"]) == (6, 1.0)
    assert cols["empty"]["distinct"] == 0 and "groups" not in cols["empty"]  # floats: no groups
    assert cols["const"]["groups"] == [{"value": "x", "count": 6}]
    assert cols["label"]["groups"] == [{"value": 0, "count": 5}, {"value": 1, "count": 1}]
    assert (cols["img"]["missing"], cols["img"]["distinct"]) == (0, 3)
    assert "groups" not in cols["img"]
    assert q["label_balance"] == {
        "column": "label",
        "missing": 0,
        "continuous": False,
        "classes": [
            {"value": 0, "count": 5, "share": 5 / 6},
            {"value": 1, "count": 1, "share": 1 / 6},
        ],
        "minority_to_majority": 0.2,
    }
    assert [(w["kind"], w["column"]) for w in q["warnings"]] == [
        ("duplicates", None),
        ("small_groups", "sex"),  # F (1) < 3; M (4) is not
        ("small_groups", "note"),  # b (2), a (1)
        ("mostly_missing", "note"),  # 3 of 6
        ("all_missing", "empty"),
        ("constant", "const"),
        ("small_groups", "label"),  # 1 (1)
    ]
    small = {w["column"]: w["message"] for w in q["warnings"] if w["kind"] == "small_groups"}
    assert "F (1)" in small["sex"] and "M (4)" not in small["sex"]
    assert "b (2), a (1)" in small["note"]


def test_default_small_group_threshold_is_the_audits(table: pa.Table) -> None:
    q = quality_report(table)
    assert q["min_group_count"] == 30 and q["label_balance"] is None
    small = [w["column"] for w in q["warnings"] if w["kind"] == "small_groups"]
    assert small == ["sex", "note", "const", "label"]  # every group of 6 rows is under 30


def test_target_missing_and_imbalance() -> None:
    labels = ["no"] * 22 + ["yes", "yes", None]
    q = quality_report(pa.table({"y": labels}), target="y", min_group_count=1)
    balance = q["label_balance"]
    assert balance["missing"] == 1
    assert [(c["value"], c["count"]) for c in balance["classes"]] == [("no", 22), ("yes", 2)]
    assert balance["minority_to_majority"] == pytest.approx(2 / 22)
    assert [w["kind"] for w in q["warnings"]] == ["duplicates", "target_missing", "imbalanced"]
    assert q["duplicate_rows"] == 25 - 3  # one column: every repeat of a value is a duplicate


@pytest.mark.parametrize(
    ("values", "continuous"),
    [
        ([0.5, 1.5, 2.0, 3.0], True),  # fractions: regression
        (list(range(25)), True),  # more than 20 whole numbers: regression
        ([1.0, 2.0, 3.0, 1.0], False),  # few whole numbers: classes
        ([True, False, True, True], False),
        (["a", "b", "a", "c"], False),
    ],
)
def test_classes_or_continuous_as_the_job_decides(values: list[object], continuous: bool) -> None:
    q = quality_report(pa.table({"y": values}), target="y")
    assert q["label_balance"]["continuous"] is continuous
    assert (infer_task(np.asarray(values, dtype=object)) == "regression") is continuous


def test_arrays_of_different_shapes_and_empty_tables() -> None:
    q = quality_report(pa.table({"s": [[1.0], [1.0, 2.0], [1.0], None]}))
    assert q["duplicate_rows"] == 1 and q["columns"][0]["missing"] == 1
    empty = quality_report(pa.table({"a": pa.array([], pa.int64())}))
    assert (empty["num_rows"], empty["duplicate_rows"], empty["warnings"]) == (0, 0, [])
    with pytest.raises(DataError, match="target 'z'"):
        quality_report(pa.table({"a": [1]}), target="z")


def test_fast_on_adult(adult_table: pa.Table) -> None:
    started = time.perf_counter()
    q = quality_report(adult_table, target=BUILTIN["adult"].target)
    assert time.perf_counter() - started < 2.0  # about 0.15 s on a 2-core laptop
    assert q["num_rows"] == 48842
    sex = next(c for c in q["columns"] if c["name"] == "sex")
    assert sum(g["count"] for g in sex["groups"]) + sex["missing"] == 48842


def test_infinities_are_counted_per_row_and_warned_about() -> None:
    # A float column, and arrays of floats (an infinity anywhere in a row's array counts the
    # row once): imputation fills missing values, not these.
    inf = float("inf")
    table = pa.table(
        {
            "x": [1.0, inf, None, -inf, 2.0],
            "seq": [[1.0, inf, inf], [0.0], None, [[-inf]][0], [3.0]],
            "n": [1, 2, 3, 4, 5],
        }
    )
    q = quality_report(table)
    cols = {c["name"]: c for c in q["columns"]}
    assert (cols["x"]["infinite"], cols["seq"]["infinite"], cols["n"]["infinite"]) == (2, 2, 0)
    infinite = [w for w in q["warnings"] if w["kind"] == "infinite"]
    assert [w["column"] for w in infinite] == ["x", "seq"]
    assert "in 2 of 5 rows" in infinite[0]["message"]
