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
    y_true: np.ndarray,
    y_pred: np.ndarray,
    classes: list[Any],
    positive: int | None = None,
    majority: int | None = None,
) -> dict[str, Any]:
    """The evaluation document stored for a job's best classifier on its test split.

    ``majority``: the most frequent class in training; its accuracy on the test split is the
    trivial baseline the model must beat.
    """
    n = len(classes)
    cm = confusion_matrix(y_true, y_pred, n)
    s = scores(cm)
    doc: dict[str, Any] = {
        "task": "classification",
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
    if majority is not None and len(y_true):
        doc["baseline"] = {
            "strategy": f"always predict the training majority class {classes[majority]!r}",
            "accuracy": float(np.mean(np.asarray(y_true) == majority)),
        }
    return doc


def evaluate_regression(
    y_true: np.ndarray, y_pred: np.ndarray, train_mean: float
) -> dict[str, Any]:
    """Regression figures in the target's units, beside the mean predictor's (the baseline)."""
    err = y_pred - y_true
    base = train_mean - y_true
    total = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "task": "regression",
        "num_rows": len(y_true),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / total if total > 0 else 0.0,
        "mean_prediction": float(y_pred.mean()),
        "baseline": {
            "strategy": f"always predict the training mean {train_mean:.6g}",
            "mae": float(np.abs(base).mean()),
            "rmse": float(np.sqrt((base**2).mean())),
        },
    }


def evaluate_anomalies(
    y_true: np.ndarray, scores_: np.ndarray, threshold: float, classes: list[Any], auc: float
) -> dict[str, Any]:
    """Anomaly detection: the flagged rows as a binary classification, plus the ranking
    quality of the scores (ROC-AUC; a random score has 0.5)."""
    doc = evaluate(y_true, (scores_ > threshold).astype(np.int64), classes, positive=1)
    doc.update(
        task="anomaly_detection",
        threshold=threshold,
        roc_auc=auc,
        baseline={"strategy": "a random anomaly score", "roc_auc": 0.5},
    )
    return doc
