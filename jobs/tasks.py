"""What a job learns: the task, the target's encoding, the loss and the validation metrics.

Three tasks: classification (binary or multi-class; cross-entropy), regression (one output,
the target standardised on the training split; MSE, MAE or Huber) and anomaly detection (an
autoencoder trained on normal rows to reconstruct its input; the reconstruction error is the
anomaly score). An :class:`Objective` travels with the training data into every trial, so the
training loop itself does not branch on the task.

torch is imported only where a tensor is touched: the job driver encodes the target with this
module before its search, and its first trial should not wait for torch's import there
(docs/benchmarks.md, "Job latency"; tests/jobs/test_driver_imports.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.data import DataError, is_missing
from jobs.evaluate import validation_metrics
from jobs.spec import Task, TrainingSpec

if TYPE_CHECKING:
    import torch

# A numeric target with more distinct values than this, or any fraction, is a regression target.
MAX_CLASS_VALUES = 20
MAX_CLASSES = 100


def infer_task(values: np.ndarray) -> Task:
    """classification or regression, from the target's non-missing values."""
    present = values[~is_missing(values)]
    if not present.size:
        return "classification"
    numbers = []
    # One value that is not a number settles it: a text target (the common case) is decided
    # on its first value, not after a walk over every row (the API infers at each submission).
    for v in present.tolist():
        if not isinstance(v, int | float) or isinstance(v, bool):
            return "classification"
        numbers.append(v)
    as_float = np.asarray(numbers, dtype=np.float64)
    fractional = bool(np.any(as_float != np.round(as_float)))
    if fractional or len(np.unique(as_float)) > MAX_CLASS_VALUES:
        return "regression"
    return "classification"


@dataclass(frozen=True)
class Target:
    """The target column encoded for training, and what is needed to decode predictions."""

    task: Task
    codes: np.ndarray  # int64 class index, or float32 standardised value (regression)
    classes: list[Any]  # classification: sorted labels; anomaly: [normal, anomaly]
    positive: int = 1  # index of the favourable class (classification) or of "anomaly"
    center: float = 0.0  # regression: target = code * scale + center
    scale: float = 1.0

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            return codes.astype(np.float64) * self.scale + self.center
        return np.asarray(self.classes, dtype=object)[codes]


def encode_target(values: np.ndarray, task: Task, positive_label: str | None, name: str) -> Target:
    """Encode a target column without missing values for ``task``."""
    if task == "regression":
        try:
            y = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"target '{name}' is not numeric; regression needs numbers") from None
        center, scale = float(y.mean()), float(y.std()) or 1.0
        return Target(task, ((y - center) / scale).astype(np.float32), [], 0, center, scale)
    classes = sorted(set(values.tolist()))
    if task == "anomaly_detection":
        if len(classes) != 2:
            raise DataError(
                f"target '{name}' marks anomalies with two values; it has {len(classes)}: "
                f"{classes[:10]}"
            )
        text = [str(c) for c in classes]
        label = positive_label if positive_label is not None else _anomaly_label(text)
        if label not in text:
            raise DataError(
                f"audit.positive_label '{label}' (the anomaly value) is not in '{name}': {text}"
            )
        anomaly = text.index(label)
        classes = [classes[1 - anomaly], classes[anomaly]]
        codes = np.array([1 if str(v) == label else 0 for v in values], dtype=np.int64)
        return Target(task, codes, classes, 1)
    if len(classes) < 2:
        raise DataError(f"target '{name}' has a single class {classes!r}: nothing to learn")
    if len(classes) > MAX_CLASSES:
        raise DataError(
            f"target '{name}' has {len(classes)} distinct values; classification supports up "
            f"to {MAX_CLASSES} classes (set task: regression for a numeric target)"
        )
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index[v] for v in values], dtype=np.int64)
    positive = len(classes) - 1
    if positive_label is not None:
        text = [str(c) for c in classes]
        if positive_label not in text:
            raise DataError(
                f"audit.positive_label '{positive_label}' is not a class of '{name}': {text}"
            )
        positive = text.index(positive_label)
    return Target(task, codes, classes, positive)


def _anomaly_label(text: list[str]) -> str:
    for candidate in ("1", "True", "true", "anomaly", "yes"):
        if candidate in text:
            return candidate
    return text[-1]


@dataclass(frozen=True)
class Objective:
    """Loss and validation metrics of a task; picklable, it rides along with the data."""

    task: Task
    n_outputs: int
    loss: str = "cross_entropy"
    class_weights: tuple[float, ...] | None = None
    target_scale: float = 1.0  # regression: metrics are reported in the target's own units

    @classmethod
    def for_task(
        cls,
        task: Task,
        training: TrainingSpec,
        target: Target,
        train_codes: np.ndarray,
        input_size: int,
    ) -> Objective:
        if task == "regression":
            loss = "mse" if training.loss == "auto" else training.loss
            return cls(task, 1, loss, None, target.scale)
        if task == "anomaly_detection":
            return cls(task, input_size, "mse")
        weights = _class_weights(training, target.classes, train_codes)
        return cls(task, len(target.classes), "cross_entropy", weights)

    def batch_loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        import torch
        from torch.nn import functional as F

        if self.task == "anomaly_detection":
            return F.mse_loss(outputs, inputs.flatten(1))
        if self.task == "regression":
            y = targets.reshape(-1, 1).to(outputs.dtype)
            if self.loss == "mae":
                return F.l1_loss(outputs, y)
            if self.loss == "huber":
                return F.huber_loss(outputs, y)
            return F.mse_loss(outputs, y)
        weight = (
            torch.tensor(self.class_weights, dtype=outputs.dtype, device=outputs.device)
            if self.class_weights is not None
            else None
        )
        return F.cross_entropy(outputs, targets, weight=weight)

    def targets_dtype(self) -> torch.dtype:
        import torch

        return torch.float32 if self.task == "regression" else torch.int64

    def validation(
        self, outputs: torch.Tensor, y: np.ndarray, inputs: torch.Tensor
    ) -> dict[str, float]:
        """Validation metrics (every figure a search or early stopping may watch)."""
        if not len(y):
            return {"val_loss": math.nan}
        if self.task == "anomaly_detection":
            errors = anomaly_scores(outputs, inputs)
            normal = y == 0
            return {
                "val_loss": float(errors[normal].mean()) if normal.any() else math.nan,
                "val_auc": roc_auc(errors, y),
            }
        import torch

        targets = torch.from_numpy(np.require(y, requirements="W")).to(outputs.device)
        loss = float(self.batch_loss(outputs, targets, inputs))
        if self.task == "regression":
            return {
                "val_loss": loss,
                **regression_metrics(
                    y * self.target_scale, outputs.reshape(-1).cpu().numpy() * self.target_scale
                ),
            }
        pred = outputs.argmax(1).cpu().numpy()
        return {"val_loss": loss, **validation_metrics(y, pred, self.n_outputs)}


def _class_weights(
    training: TrainingSpec, classes: list[Any], codes: np.ndarray
) -> tuple[float, ...] | None:
    cw = training.class_weights
    if cw == "none":
        return None
    if cw == "balanced":
        counts = np.bincount(codes, minlength=len(classes)).astype(np.float64)
        # sklearn's "balanced": n / (k * count); a class absent from training weighs 0.
        return tuple(float(len(codes) / (len(classes) * c)) if c else 0.0 for c in counts.tolist())
    assert isinstance(cw, dict)
    text = [str(c) for c in classes]
    unknown = sorted(set(cw) - set(text))
    if unknown:
        raise DataError(f"training.class_weights names {unknown}, which are not classes: {text}")
    return tuple(float(cw.get(t, 1.0)) for t in text)


def anomaly_scores(outputs: torch.Tensor, inputs: torch.Tensor) -> np.ndarray:
    """Per-row reconstruction error: the anomaly score."""
    flat = inputs.flatten(1).to(outputs.dtype)
    return ((outputs - flat) ** 2).mean(dim=1).cpu().numpy().astype(np.float64)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); NaN without both labels."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    err = y_pred - y_true
    total = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "val_mae": float(np.abs(err).mean()),
        "val_rmse": float(np.sqrt((err**2).mean())),
        "val_r2": 1.0 - float((err**2).sum()) / total if total > 0 else 0.0,
    }
