"""Classification metrics from one confusion matrix.

All figures come from a single ``np.bincount`` over (label, prediction) pairs, which keeps
evaluation cheap enough to run on every validation epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    flat = np.asarray(y_true, np.int64) * n_classes + np.asarray(y_pred, np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # sklearn's convention: a ratio with an empty denominator is 0 (zero_division=0).
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def scores(cm: np.ndarray) -> dict[str, Any]:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, actual)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": actual.astype(np.int64),
    }


def validation_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    s = scores(confusion_matrix(y_true, y_pred, n_classes))
    return {"val_accuracy": s["accuracy"], "val_f1_macro": float(s["f1"].mean())}


def evaluate(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[Any], positive: int | None = None
) -> dict[str, Any]:
    """The evaluation document stored for a job's best model on its test split."""
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, n)
    s = scores(cm)
    doc: dict[str, Any] = {
        "num_rows": int(cm.sum()),
        "classes": list(classes),
        "accuracy": s["accuracy"],
        "precision_macro": float(s["precision"].mean()),
        "recall_macro": float(s["recall"].mean()),
        "f1_macro": float(s["f1"].mean()),
        "per_class": [
            {
                "class": classes[i],
                "precision": float(s["precision"][i]),
                "recall": float(s["recall"][i]),
                "f1": float(s["f1"][i]),
                "support": int(s["support"][i]),
            }
            for i in range(n)
        ],
        "confusion_matrix": cm.tolist(),
    }
    if positive is not None:
        doc["positive_class"] = classes[positive]
        doc["precision"] = float(s["precision"][positive])
        doc["recall"] = float(s["recall"][positive])
        doc["f1"] = float(s["f1"][positive])
    return doc
