"""The per-trial training loop: plain PyTorch, no Ray inside.

Ray Tune calls :func:`fit` from a function trainable (see ``jobs/search.py``); keeping the loop
free of Ray makes it testable on its own and reusable under Ray Train when a trial spans
several workers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from jobs.augment import augment, mixup
from jobs.checkpoint import StateDict, TrainState
from jobs.models import build_model, freeze
from jobs.spec import LRScheduleSpec, TrainingSpec, natural_mode
from jobs.train_data import TrainData as TrainData  # where the driver builds it

log = logging.getLogger(__name__)

# (epoch starting at 1, metrics, whether this is the trial's last epoch, and a function that
# captures the full training state, for callers that checkpoint this epoch)
EpochCallback = Callable[[int, dict[str, float], bool, Callable[[], TrainState]], None]


class TrainingError(RuntimeError):
    """Training cannot go on; the message tells the user what to change."""


# On a GPU, a training split up to this fraction of the free device memory is copied there
# once and batches are gathered on the device; a larger one goes through pinned host buffers.
DEVICE_RESIDENT_FRACTION = 0.25


class _Feeder:
    """Puts each training batch on the training device.

    On the CPU a batch is a slice of the arrays. On a GPU the split is copied to the device
    once when it fits (no host-to-device copy per batch at all); otherwise each batch is
    gathered straight into one of two pinned host buffers and copied asynchronously, so the
    copy of one batch overlaps the compute of the one before. (Indexing a pinned tensor gives
    an unpinned one, on which ``non_blocking`` copies would be synchronous.)
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int):
        self.device = device
        self.mode = "host"
        self.turn = 0
        self.slots: list[tuple[torch.Tensor, torch.Tensor, torch.cuda.Event]] = []
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if x.nbytes + y.nbytes <= free * DEVICE_RESIDENT_FRACTION:
                self.mode = "resident"
                x, y = x.to(device), y.to(device)
            else:
                self.mode = "pinned"
                self.slots = [
                    (
                        torch.empty((batch, *x.shape[1:]), dtype=x.dtype).pin_memory(),
                        torch.empty((batch, *y.shape[1:]), dtype=y.dtype).pin_memory(),
                        torch.cuda.Event(),
                    )
                    for _ in range(2)
                ]
        self.x, self.y = x, y

    def order(self, order: torch.Tensor) -> torch.Tensor:
        """An epoch's row order, where the batches are gathered."""
        return order.to(self.device) if self.mode == "resident" else order

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode != "pinned":
            return self.x[idx].to(self.device), self.y[idx].to(self.device)
        hx, hy, copied = self.slots[self.turn]
        self.turn ^= 1
        copied.synchronize()  # the copy that last read this buffer is done with it
        n = len(idx)
        torch.index_select(self.x, 0, idx, out=hx[:n])
        torch.index_select(self.y, 0, idx, out=hy[:n])
        xb = hx[:n].to(self.device, non_blocking=True)
        yb = hy[:n].to(self.device, non_blocking=True)
        copied.record()
        return xb, yb


def init_model(
    model_spec: Any,
    spec: TrainingSpec,
    example_shape: tuple[int, ...],
    out_features: int,
    parent: StateDict | None = None,
) -> nn.Module:
    """Build a model whose initial weights depend only on the spec's seed, or start from a
    parent model's weights (transfer learning) with the spec's layer groups frozen."""
    torch.manual_seed(spec.seed)
    model = build_model(model_spec, example_shape, out_features)
    if parent is not None:
        start_from(model, parent, list(getattr(model_spec, "freeze", [])))
    return model


def start_from(model: nn.Module, parent: StateDict, frozen: list[str]) -> list[str]:
    """Load the parent's weights where they fit; return the names of those that start fresh
    (a head for a different number of classes)."""
    own = model.state_dict()
    fits = {k: v for k, v in parent.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise TrainingError(
            "model.init_from: none of the parent model's layers fit this model; is it the same "
            "architecture on the same input?"
        )
    model.load_state_dict(fits, strict=False)
    fresh = sorted(set(own) - set(fits))
    for group in frozen:
        if any(k.startswith(f"{group}.") for k in fresh):
            raise TrainingError(
                f"model.freeze: '{group}' differs from the parent's, so it has no pretrained "
                "weights to keep fixed"
            )
    if fresh:
        log.info("transfer learning: %d tensors start fresh: %s", len(fresh), fresh[:8])
    freeze(model, frozen)
    return fresh


def make_optimizer(spec: TrainingSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    lr, wd = spec.learning_rate, spec.weight_decay
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=wd
        )
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=lr, momentum=spec.momentum, weight_decay=wd)


def scheduled_factor(s: LRScheduleSpec, epoch: int, epochs: int, base_lr: float) -> float:
    """The factor on the base learning rate in ``epoch`` (from 1) from warm-up, step and
    cosine schedules: a pure function of the epoch, so resuming needs no scheduler state."""
    factor = 1.0
    if s.kind == "step":
        factor = s.gamma ** ((epoch - 1) // s.step_size)
    elif s.kind == "cosine":
        floor = min(s.min_lr / base_lr, 1.0)
        progress = (epoch - 1) / max(epochs - 1, 1)
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if s.warmup_epochs and epoch <= s.warmup_epochs:
        factor *= 0.1 + 0.9 * (epoch - 1) / s.warmup_epochs
    return factor


def _device_notices(spec: TrainingSpec, device: torch.device) -> None:
    if device.type != "cuda":
        if spec.mixed_precision != "none":
            log.warning("training.mixed_precision=%s ignored on CPU", spec.mixed_precision)
        if spec.compile:
            log.warning("training.compile ignored on CPU")


def predict_logits(
    model: nn.Module, x: np.ndarray, batch_size: int = 8192, device: torch.device | None = None
) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        t = torch.from_numpy(np.require(x, requirements="W"))
        return torch.cat(
            [model(t[i : i + batch_size].to(device or "cpu")) for i in range(0, len(t), batch_size)]
        )


def _diverged(loss: float, epoch: int) -> TrainingError:
    return TrainingError(f"loss became {loss} in epoch {epoch}; try a lower training.learning_rate")


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
    objective = data.task
    x = torch.from_numpy(np.require(data.x_train, requirements="W"))
    y = torch.from_numpy(np.require(data.y_train, requirements="W"))
    feeder = _Feeder(x, y, device, spec.batch_size)
    # On a GPU every .item() waits for the queued work: check and sum the loss once an epoch.
    sync_per_batch = device.type != "cuda"
    # Frozen layers (transfer learning) take no optimizer state and no penalty.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(spec, trainable)
    epochs = min(spec.epochs, max_epochs) if max_epochs else spec.epochs
    _device_notices(spec, device)
    amp = device.type == "cuda" and spec.mixed_precision != "none"
    amp_dtype = torch.bfloat16 if spec.mixed_precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and spec.mixed_precision == "fp16")
    forward = model
    if spec.compile and device.type == "cuda":
        forward = torch.compile(model)  # type: ignore[assignment]
    aug = data.augmentation
    mix = aug.mixup_alpha if aug is not None and objective.task == "classification" else 0.0
    sched = spec.lr_schedule
    x_val = torch.from_numpy(np.require(data.x_val, requirements="W")).to(device)

    es = spec.early_stopping
    es_mode = natural_mode(es.metric) if es is not None else "max"
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
            group["weight_decay"] = spec.weight_decay
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
        lr = spec.learning_rate * state.lr_factor
        lr *= scheduled_factor(sched, epoch, epochs, spec.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = feeder.order(torch.randperm(len(x), generator=gen)[rank::world])
        # float64, as a Python float sum would be, on the device so that adding needs no sync
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for i in range(0, len(order), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            optimizer.zero_grad(set_to_none=True)
            xb, yb = feeder.batch(idx)
            if aug is not None and aug.active:
                xb = augment(xb, aug)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                if mix:
                    mixed, partner, lam = mixup(xb, mix)
                    out = forward(mixed)
                    loss = lam * objective.batch_loss(out, yb, xb) + (
                        1 - lam
                    ) * objective.batch_loss(out, yb[partner], xb)
                else:
                    loss = objective.batch_loss(forward(xb), yb, xb)
            if spec.l1:
                loss = loss + spec.l1 * sum(p.abs().sum() for p in trainable)
            if sync_per_batch and not torch.isfinite(loss):
                raise _diverged(loss.item(), epoch)
            scaler.scale(loss).backward()
            if spec.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(trainable, spec.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach().double() * len(idx)
            count += len(idx)

        total = loss_sum.item()
        if not math.isfinite(total):
            raise _diverged(total, epoch)
        if all_reduce is not None:
            summed = all_reduce(torch.tensor([total, float(count)], device=device))
            total, count = float(summed[0]), int(summed[1])
        outputs = predict_logits(core, data.x_val, device=device)
        metrics = {
            "train_loss": total / max(count, 1),
            **objective.validation(outputs, data.y_val, x_val),
            "lr": lr,
        }
        metrics["epoch_seconds"] = time.perf_counter() - started
        if sched.kind == "plateau":
            if metrics["val_loss"] < state.plateau_best:
                state.plateau_best, state.plateau_stale = metrics["val_loss"], 0
            else:
                state.plateau_stale += 1
                if state.plateau_stale > sched.patience:
                    floor = sched.min_lr / spec.learning_rate
                    state.lr_factor = max(state.lr_factor * sched.gamma, floor)
                    state.plateau_stale = 0

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
