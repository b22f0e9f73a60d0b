"""The per-trial training loop: plain PyTorch, no Ray inside.

Ray Tune calls :func:`fit` from a function trainable (see ``jobs/search.py``); keeping the loop
free of Ray makes it testable on its own and reusable under Ray Train when a trial spans
several workers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from jobs.checkpoint import StateDict, TrainState
from jobs.evaluate import validation_metrics
from jobs.models import build_model
from jobs.spec import TrainingSpec

# (epoch starting at 1, metrics, whether this is the trial's last epoch, and a function that
# captures the full training state, for callers that checkpoint this epoch)
EpochCallback = Callable[[int, dict[str, float], bool, Callable[[], TrainState]], None]


class TrainingError(RuntimeError):
    """Training cannot go on; the message tells the user what to change."""


@dataclass(frozen=True)
class TrainData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int


def init_model(
    model_spec: Any, spec: TrainingSpec, in_features: int, out_features: int
) -> nn.Module:
    """Build a model whose initial weights depend only on the spec's seed."""
    torch.manual_seed(spec.seed)
    return build_model(model_spec, in_features, out_features)


def make_optimizer(spec: TrainingSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    lr, wd = spec.learning_rate, spec.weight_decay
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)


def predict_logits(
    model: nn.Module, x: np.ndarray, batch_size: int = 8192, device: torch.device | None = None
) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        t = torch.from_numpy(np.require(x, requirements="W"))
        return torch.cat(
            [model(t[i : i + batch_size].to(device or "cpu")) for i in range(0, len(t), batch_size)]
        )


def _better(a: float, b: float, mode: str, min_delta: float = 0.0) -> bool:
    return a < b - min_delta if mode == "min" else a > b + min_delta


def fit(
    model: nn.Module,
    data: TrainData,
    spec: TrainingSpec,
    select_metric: str,
    select_mode: Literal["max", "min"],
    on_epoch: EpochCallback,
    resume: TrainState | None = None,
    max_epochs: int | None = None,
    shard: tuple[int, int] = (0, 1),
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | None = None,
) -> StateDict:
    """Train ``model``; return the weights of the epoch that scored best on ``select_metric``.

    Batch order and dropout are seeded from ``spec.seed``; build the model with
    :func:`init_model` for seeded initial weights too. With ``resume`` the loop continues from
    a checkpoint exactly where it stopped: same weights, optimizer moments, RNG streams and
    early-stopping counters, so the run matches one that was never interrupted.

    Data-parallel workers pass ``shard=(rank, world_size)`` and an ``all_reduce`` (sum): every
    worker draws the same shuffled order and trains on its slice of it, the training loss is
    summed across workers, and each evaluates the whole validation split with the shared
    weights, so every worker reports the same, global metrics.
    """
    core = getattr(model, "module", model)  # DDP wraps the model; states are the inner one's
    device = device or torch.device("cpu")
    rank, world = shard
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    # Arrays from Ray's object store are read-only; torch wants writable memory.
    x = torch.from_numpy(np.require(data.x_train, requirements="W"))
    y = torch.from_numpy(np.require(data.y_train, requirements="W"))
    y_val = torch.from_numpy(np.require(data.y_val, requirements="W")).to(device)
    if device.type == "cuda":
        # Pinned host memory makes the per-batch copies asynchronous.
        x, y = x.pin_memory(), y.pin_memory()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = make_optimizer(spec, list(model.parameters()))
    epochs = min(spec.epochs, max_epochs) if max_epochs else spec.epochs

    es = spec.early_stopping
    es_mode = "min" if es is not None and es.metric.endswith("loss") else "max"
    state = TrainState(
        epoch=0,
        model={},
        optimizer={},
        best={},
        best_score=math.inf if select_mode == "min" else -math.inf,
        early_stop_best=math.inf if es_mode == "min" else -math.inf,
        stale_epochs=0,
        batch_rng=gen.get_state(),
        torch_rng=torch.get_rng_state(),
    )
    if resume is not None:
        core.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        # A restored trial may carry new hyperparameters (PBT): the spec wins over the state.
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = spec.learning_rate, spec.weight_decay
        gen.set_state(resume.batch_rng)
        torch.set_rng_state(resume.torch_rng)
        state = resume

    def weights() -> StateDict:
        return {k: v.detach().to("cpu", copy=True) for k, v in core.state_dict().items()}

    def snapshot() -> TrainState:
        state.model = weights()
        state.optimizer = optimizer.state_dict()
        state.batch_rng, state.torch_rng = gen.get_state(), torch.get_rng_state()
        return state

    for epoch in range(state.epoch + 1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(x), generator=gen)[rank::world]
        total, count = 0.0, 0
        for i in range(0, len(order), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            optimizer.zero_grad(set_to_none=True)
            xb = x[idx].to(device, non_blocking=True)
            yb = y[idx].to(device, non_blocking=True)
            loss = loss_fn(model(xb), yb)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss.item()} in epoch {epoch}; "
                    "try a lower training.learning_rate"
                )
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)

        if all_reduce is not None:
            summed = all_reduce(torch.tensor([total, float(count)], device=device))
            total, count = float(summed[0]), int(summed[1])
        logits = predict_logits(core, data.x_val, device=device)
        metrics = {
            "train_loss": total / max(count, 1),
            "val_loss": float(loss_fn(logits, y_val)) if len(y_val) else math.nan,
            **validation_metrics(data.y_val, logits.argmax(1).cpu().numpy(), data.n_classes),
        }
        metrics["epoch_seconds"] = time.perf_counter() - started

        state.epoch = epoch
        score = metrics[select_metric]
        if not state.best or _better(score, state.best_score, select_mode):
            state.best_score = score
            state.best = weights()

        last = epoch == epochs
        if es is not None:
            if _better(metrics[es.metric], state.early_stop_best, es_mode, es.min_delta):
                state.early_stop_best, state.stale_epochs = metrics[es.metric], 0
            else:
                state.stale_epochs += 1
                last = last or state.stale_epochs >= es.patience
        on_epoch(epoch, metrics, last, snapshot)
        if last:
            break
    return state.best
