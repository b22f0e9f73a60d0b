from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from jobs.spec import EarlyStoppingSpec, MLPSpec, TrainingSpec
from jobs.train import TrainData, TrainingError, fit, init_model


def blobs(seed: int = 0, n: int = 400) -> TrainData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 4)) + y[:, None] * 2.0).astype(np.float32)
    return TrainData(x[:300], y[:300], x[300:], y[300:], n_classes=2)


def run(spec: TrainingSpec, data: TrainData) -> list[dict[str, Any]]:
    model = init_model(MLPSpec(hidden_sizes=[8]), spec, 4, 2)
    seen: list[dict[str, Any]] = []
    fit(
        model,
        data,
        spec,
        "val_accuracy",
        "max",
        lambda e, m, last, best: seen.append({"epoch": e, "last": last, **m}),
    )
    return seen


def test_learns_and_reports_every_epoch() -> None:
    seen = run(TrainingSpec(epochs=5, learning_rate=0.05, batch_size=32), blobs())
    assert [s["epoch"] for s in seen] == [1, 2, 3, 4, 5]
    assert [s["last"] for s in seen] == [False] * 4 + [True]
    assert seen[-1]["val_accuracy"] > 0.9


def test_same_seed_same_metrics() -> None:
    spec = TrainingSpec(epochs=3, learning_rate=0.01, batch_size=16, seed=5)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]  # noqa: E731
    assert strip(run(spec, blobs())) == strip(run(spec, blobs()))


def test_early_stopping_ends_the_trial() -> None:
    spec = TrainingSpec(
        epochs=50,
        learning_rate=1e-9,
        optimizer="sgd",
        early_stopping=EarlyStoppingSpec(metric="val_loss", patience=2, min_delta=0.1),
    )
    seen = run(spec, blobs())
    assert len(seen) == 3 and seen[-1]["last"]


def test_divergence_is_a_clear_error() -> None:
    data = blobs()
    bad = TrainData(data.x_train * 1e30, data.y_train, data.x_val, data.y_val, 2)
    with pytest.raises(TrainingError, match="learning_rate"):
        run(TrainingSpec(epochs=2, learning_rate=10, optimizer="sgd"), bad)
