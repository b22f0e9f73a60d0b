from __future__ import annotations

import numpy as np
import pytest

from jobs.audit import run_audit


def test_hand_computed_table() -> None:
    # group a: 4 rows, 2 predicted positive; group b: 4 rows, 1 predicted positive;
    # two rows without a sensitive value form the "unknown" group.
    y_true = np.array(["y", "y", "n", "n", "y", "n", "n", "n", "y", "n"], dtype=object)
    y_pred = np.array(["y", "n", "y", "n", "y", "n", "n", "n", "n", "n"], dtype=object)
    sex = np.array(["a", "a", "a", "a", "b", "b", "b", "b", None, None], dtype=object)
    doc = run_audit(y_true, y_pred, {"sex": sex}, "y", {"demographic_parity_ratio": 0.8})
    groups = {g["group"]: g for g in doc["features"]["sex"]["groups"]}
    assert set(groups) == {"a", "b", "unknown"}
    a, b, unknown = groups["a"], groups["b"], groups["unknown"]
    assert (a["count"], a["selection_rate"], a["accuracy"]) == (4, 0.5, 0.5)
    assert (a["true_positive_rate"], a["false_positive_rate"]) == (0.5, 0.5)
    assert (b["count"], b["selection_rate"], b["accuracy"]) == (4, 0.25, 1.0)
    assert (b["true_positive_rate"], b["false_positive_rate"]) == (1.0, 0.0)
    assert (unknown["count"], unknown["selection_rate"]) == (2, 0.0)
    d = doc["features"]["sex"]["disparities"]
    assert d["demographic_parity_difference"] == pytest.approx(0.5)
    assert d["demographic_parity_ratio"] == pytest.approx(0.0)
    assert d["equalized_odds_difference"] == pytest.approx(1.0)
    assert doc["passed"] is False
    assert doc["checks"] == [
        {
            "feature": "sex",
            "metric": "demographic_parity_ratio",
            "value": 0.0,
            "threshold": 0.8,
            "rule": ">=",
            "passed": False,
        }
    ]


def test_equal_groups_pass() -> None:
    y = np.array([1, 0, 1, 0] * 25, dtype=object)
    g = np.array(["a", "a", "b", "b"] * 25, dtype=object)
    doc = run_audit(
        y, y, {"g": g}, 1, {"demographic_parity_ratio": 0.8, "equalized_odds_difference": 0.1}
    )
    assert doc["passed"] is True
    assert doc["features"]["g"]["disparities"]["demographic_parity_ratio"] == 1.0
