from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.checkpoint import load_checkpoint, save_checkpoint
from jobs.spec import EarlyStoppingSpec, MLPSpec, TrainingSpec
from jobs.train import TrainData, TrainingError, TrainState, fit, init_model


def blobs(seed: int = 0, n: int = 400) -> TrainData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 4)) + y[:, None] * 2.0).astype(np.float32)
    return TrainData(x[:300], y[:300], x[300:], y[300:], n_classes=2)


def run(
    spec: TrainingSpec,
    data: TrainData,
    resume: TrainState | None = None,
    keep: list[TrainState] | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    model = init_model(MLPSpec(hidden_sizes=[8], dropout=0.2), spec, 4, 2)
    seen: list[dict[str, Any]] = []

    def on_epoch(e: int, m: dict[str, float], last: bool, snapshot: Any) -> None:
        seen.append({"epoch": e, "last": last, **m})
        if keep is not None:
            keep.append(copy.deepcopy(snapshot()))
        if stop_after is not None and e == stop_after:
            raise KeyboardInterrupt  # stands in for a worker dying after this epoch

    with contextlib.suppress(KeyboardInterrupt):
        fit(model, data, spec, "val_accuracy", "max", on_epoch, resume=resume)
    return seen


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def test_learns_and_reports_every_epoch() -> None:
    seen = run(TrainingSpec(epochs=5, learning_rate=0.05, batch_size=32), blobs())
    assert [s["epoch"] for s in seen] == [1, 2, 3, 4, 5]
    assert [s["last"] for s in seen] == [False] * 4 + [True]
    assert seen[-1]["val_accuracy"] > 0.9


def test_same_seed_same_metrics() -> None:
    spec = TrainingSpec(epochs=3, learning_rate=0.01, batch_size=16, seed=5)
    assert strip(run(spec, blobs())) == strip(run(spec, blobs()))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_resume_from_a_checkpoint_is_exact(optimizer: str, tmp_path: Path) -> None:
    spec = TrainingSpec(
        epochs=5,
        learning_rate=0.01,
        batch_size=16,
        seed=2,
        optimizer=optimizer,
        early_stopping=EarlyStoppingSpec(patience=10),
    )
    straight = run(spec, blobs())
    states: list[TrainState] = []
    first = run(spec, blobs(), keep=states, stop_after=2)
    assert [r["epoch"] for r in first] == [1, 2]
    save_checkpoint(tmp_path, states[-1])  # through the files, as a restarted worker would
    rest = run(spec, blobs(), resume=load_checkpoint(tmp_path))
    assert [r["epoch"] for r in rest] == [3, 4, 5]
    assert strip(first + rest) == strip(straight)


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
