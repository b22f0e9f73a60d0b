from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.checkpoint import load_checkpoint, save_checkpoint
from jobs.spec import AugmentationSpec, EarlyStoppingSpec, LRScheduleSpec, MLPSpec, TrainingSpec
from jobs.train import (
    TrainData,
    TrainingError,
    TrainState,
    fit,
    init_model,
    scheduled_factor,
)


def blobs(seed: int = 0, n: int = 400, augmentation: AugmentationSpec | None = None) -> TrainData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 4)) + y[:, None] * 2.0).astype(np.float32)
    return TrainData(x[:300], y[:300], x[300:], y[300:], n_classes=2, augmentation=augmentation)


def run(
    spec: TrainingSpec,
    data: TrainData,
    resume: TrainState | None = None,
    keep: list[TrainState] | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    model = init_model(MLPSpec(hidden_sizes=[8], dropout=0.2), spec, (4,), 2)
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


RESUMABLE = [
    {"optimizer": "sgd", "nesterov": True, "momentum": 0.8},
    {"optimizer": "adam"},
    {"optimizer": "adamw", "lr_schedule": {"kind": "cosine", "warmup_epochs": 2}},
    {"optimizer": "rmsprop", "lr_schedule": {"kind": "step", "step_size": 2, "gamma": 0.5}},
    {"optimizer": "adam", "lr_schedule": {"kind": "plateau", "patience": 0, "gamma": 0.5}},
    {"optimizer": "adam", "l1": 1e-3, "grad_clip_norm": 0.5},
]


@pytest.mark.parametrize("options", RESUMABLE, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("augmented", [False, True], ids=["plain", "augmented"])
def test_resume_from_a_checkpoint_is_exact(
    options: dict[str, Any], augmented: bool, tmp_path: Path
) -> None:
    spec = TrainingSpec.model_validate(
        {
            "epochs": 5,
            "learning_rate": 0.01,
            "batch_size": 16,
            "seed": 2,
            "early_stopping": {"patience": 10},
            **options,
        }
    )
    aug = AugmentationSpec(noise_std=0.3, mixup_alpha=0.4) if augmented else None
    straight = run(spec, blobs(augmentation=aug))
    states: list[TrainState] = []
    first = run(spec, blobs(augmentation=aug), keep=states, stop_after=2)
    assert [r["epoch"] for r in first] == [1, 2]
    save_checkpoint(tmp_path, states[-1])  # through the files, as a restarted worker would
    rest = run(spec, blobs(augmentation=aug), resume=load_checkpoint(tmp_path))
    assert [r["epoch"] for r in rest] == [3, 4, 5]
    assert strip(first + rest) == strip(straight)


def test_learning_rate_schedules() -> None:
    step = LRScheduleSpec(kind="step", step_size=2, gamma=0.5)
    assert [scheduled_factor(step, e, 6, 0.1) for e in range(1, 7)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    cosine = LRScheduleSpec(kind="cosine", min_lr=0.01)
    factors = [scheduled_factor(cosine, e, 5, 0.1) for e in range(1, 6)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.1)
    assert factors == sorted(factors, reverse=True)
    warm = LRScheduleSpec(warmup_epochs=4)
    assert [scheduled_factor(warm, e, 9, 0.1) for e in (1, 3, 5)] == [
        pytest.approx(0.1),
        pytest.approx(0.55),
        1.0,
    ]
    # reduce-on-plateau halves the rate when validation loss stops improving
    seen = run(
        TrainingSpec(
            epochs=6,
            learning_rate=1e-9,
            lr_schedule=LRScheduleSpec(kind="plateau", patience=0, gamma=0.5),
        ),
        blobs(),
    )
    assert seen[-1]["lr"] < seen[0]["lr"]


def test_l1_shrinks_weights_and_clipping_bounds_steps() -> None:
    def weight_norm(spec: TrainingSpec) -> float:
        model = init_model(MLPSpec(hidden_sizes=[8]), spec, (4,), 2)
        fit(model, blobs(), spec, "val_accuracy", "max", lambda *a: None)
        return float(sum(p.detach().abs().sum() for p in model.parameters()))

    base = TrainingSpec(epochs=5, learning_rate=0.01, batch_size=16)
    assert weight_norm(base.model_copy(update={"l1": 0.05})) < 0.8 * weight_norm(base)
    huge = TrainingSpec(epochs=1, learning_rate=5.0, batch_size=300, optimizer="sgd", momentum=0)
    start = init_model(MLPSpec(hidden_sizes=[8]), huge, (4,), 2)
    before = [p.detach().clone() for p in start.parameters()]
    fit(
        start,
        blobs(),
        huge.model_copy(update={"grad_clip_norm": 0.01}),
        "val_accuracy",
        "max",
        lambda *a: None,
    )
    moved = (
        sum(
            float((p.detach() - b).norm() ** 2)
            for p, b in zip(start.parameters(), before, strict=True)
        )
        ** 0.5
    )
    assert moved <= 5.0 * 0.01 + 1e-6  # one step of lr x the clipped norm


def test_gpu_only_options_are_ignored_on_cpu_with_a_notice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = TrainingSpec(epochs=1, mixed_precision="bf16", compile=True)
    with caplog.at_level("WARNING", logger="jobs.train"):
        seen = run(spec, blobs())
    assert len(seen) == 1
    assert "mixed_precision=bf16 ignored on CPU" in caplog.text
    assert "compile ignored on CPU" in caplog.text


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


def test_transfer_learning_loads_what_fits_and_freezes_groups() -> None:
    spec = TrainingSpec(epochs=2, learning_rate=0.05, batch_size=32)
    parent = init_model(MLPSpec(hidden_sizes=[8]), spec, (4,), 2)
    fit(parent, blobs(), spec, "val_accuracy", "max", lambda *a: None)
    weights = {k: v.clone() for k, v in parent.state_dict().items()}

    # Three classes now: the head starts fresh, the body is the parent's and stays fixed.
    child_spec = MLPSpec(hidden_sizes=[8], init_from="mdl_parent", freeze=["body"])
    child = init_model(child_spec, spec, (4,), 3, parent=weights)
    body = {k: v for k, v in child.state_dict().items() if k.startswith("body.")}
    assert body and all(torch.equal(v, weights[k]) for k, v in body.items())
    data = blobs()
    fit(
        child,
        TrainData(data.x_train, data.y_train, data.x_val, data.y_val, 3),
        spec,
        "val_accuracy",
        "max",
        lambda *a: None,
    )
    assert all(torch.equal(child.state_dict()[k], weights[k]) for k in body)
    assert not torch.equal(child.state_dict()["head.weight"][:2], weights["head.weight"])

    with pytest.raises(TrainingError, match="'head' differs"):
        init_model(
            MLPSpec(hidden_sizes=[8], init_from="mdl_p", freeze=["head"]),
            spec,
            (4,),
            3,
            parent=weights,
        )
    with pytest.raises(TrainingError, match="none of the parent"):
        init_model(MLPSpec(hidden_sizes=[5]), spec, (7,), 3, parent=weights)
