"""Fairness audit of a model's predictions with fairlearn.

The audit compares groups of each sensitive feature on the held-out test split: per group its
size, selection rate, accuracy, true and false positive rates; across groups the demographic
parity difference and ratio and the equalized odds difference. Rates are measured for one
favourable outcome (``positive``): a binary question even when the task has more classes.
Rows whose sensitive value is missing form their own ``unknown`` group rather than vanishing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

UNKNOWN_GROUP = "unknown"

# threshold name -> (disparity it bounds, "min" when the disparity must be at least the
# threshold, "max" when at most)
THRESHOLD_KINDS: dict[str, str] = {
    "demographic_parity_ratio": "min",
    "demographic_parity_difference": "max",
    "equalized_odds_difference": "max",
}
DEFAULT_THRESHOLDS = {"demographic_parity_ratio": 0.8}


def group_labels(values: np.ndarray) -> np.ndarray:
    return np.array(
        [
            UNKNOWN_GROUP if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            for v in values
        ],
        dtype=object,
    )


def _finite(x: float) -> float | None:
    # JSON has no NaN: an undefined rate (no positives in a group) is reported as null.
    return float(x) if math.isfinite(x) else None


def audit_feature(y_true: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray) -> dict[str, Any]:
    """Audit one sensitive feature; ``y_true``/``y_pred`` are 1 for the positive outcome."""
    groups = group_labels(sensitive)
    frame = MetricFrame(
        metrics={
            "count": count,
            "selection_rate": selection_rate,
            "accuracy": accuracy_score,
            "true_positive_rate": true_positive_rate,
            "false_positive_rate": false_positive_rate,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=groups,
    )
    by_group = frame.by_group
    rows = [
        {
            "group": str(name),
            "count": int(by_group.loc[name, "count"]),
            "selection_rate": _finite(by_group.loc[name, "selection_rate"]),
            "accuracy": _finite(by_group.loc[name, "accuracy"]),
            "true_positive_rate": _finite(by_group.loc[name, "true_positive_rate"]),
            "false_positive_rate": _finite(by_group.loc[name, "false_positive_rate"]),
        }
        for name in by_group.index
    ]
    disparities = {
        "demographic_parity_difference": demographic_parity_difference(
            y_true, y_pred, sensitive_features=groups
        ),
        "demographic_parity_ratio": demographic_parity_ratio(
            y_true, y_pred, sensitive_features=groups
        ),
        "equalized_odds_difference": equalized_odds_difference(
            y_true, y_pred, sensitive_features=groups
        ),
    }
    return {
        "groups": rows,
        "disparities": {k: _finite(float(v)) for k, v in disparities.items()},
    }


def run_audit(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: dict[str, np.ndarray],
    positive_label: Any,
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The audit document: one section per sensitive feature and the threshold checks.

    ``y_true`` and ``y_pred`` hold class labels; rates count ``positive_label`` as the
    favourable outcome.
    """
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    t = (np.asarray(y_true, dtype=object) == positive_label).astype(np.int64)
    p = (np.asarray(y_pred, dtype=object) == positive_label).astype(np.int64)
    features = {name: audit_feature(t, p, values) for name, values in sensitive.items()}
    checks = []
    for name, section in features.items():
        for metric, limit in thresholds.items():
            value = section["disparities"][metric]
            kind = THRESHOLD_KINDS[metric]
            ok = value is not None and (value >= limit if kind == "min" else value <= limit)
            checks.append(
                {
                    "feature": name,
                    "metric": metric,
                    "value": value,
                    "threshold": limit,
                    "rule": ">=" if kind == "min" else "<=",
                    "passed": ok,
                }
            )
    return {
        "positive_label": positive_label,
        "num_rows": len(t),
        "method": "fairlearn MetricFrame on the test split; disparities between groups "
        "(largest minus smallest, smallest over largest)",
        "features": features,
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }
