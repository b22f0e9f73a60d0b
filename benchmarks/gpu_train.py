"""The training loop on a GPU: a hand-written PyTorch loop against the project's loop.

    PYTHONPATH=. python -m benchmarks.gpu_train [--device auto|cpu|cuda] [--seconds 10]
    PYTHONPATH=. python -m benchmarks.gpu_train --quick --device cpu    # smoke run, seconds

Both sides train the same CNN (``jobs.models.build_model`` from the same ``CNNSpec`` and
seed) on the same synthetic images with Adam, the same batch size and, on CUDA, autocast
(fp16 with a GradScaler by default), and both evaluate the validation split after each epoch:

- **plain**: what a careful PyTorch user writes: a ``DataLoader`` whose sampler yields whole
  batches of indices from pinned tensors, ``non_blocking`` copies, ``torch.autocast`` and
  ``GradScaler``, accuracy on the validation split;
- **project**: ``jobs.train.fit``, the loop every trial runs, with the same spec; on a GPU once
  as it decides itself (the split fits: kept on the device) and once with the split forced
  through pinned host buffers (as for a split too big for the device).

Samples/s counts training rows from the end of the first epoch (warm-up: allocator, cuDNN's
choice of kernels) to the end of the last one. It prints one JSON line per side and the ratio
project / plain. Imports only torch, numpy and the project's ``jobs`` code (no Ray), so it runs
on a machine that has only PyTorch and pydantic.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

import jobs.train
from jobs.spec import CNNSpec, TrainingSpec
from jobs.train import TrainData, TrainState, fit, init_model


class _Enough(Exception):
    """Raised from the epoch callback once the time is up: the way out of ``fit``."""


def images(n: int, side: int, channels: int, classes: int, seed: int = 0) -> TrainData:
    """Class-dependent blobs of brightness over noise: learnable, so the loss really moves."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, channels, side, side)).astype(np.float32)
    x[:, :, : side // 2, : side // 2] += (y[:, None, None, None] / classes).astype(np.float32)
    cut = n - max(n // 20, 1)
    return TrainData(x[:cut], y[:cut], x[cut:], y[cut:], n_classes=classes)


def run_plain(
    model_spec: CNNSpec, spec: TrainingSpec, data: TrainData, device: torch.device, seconds: float
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    model = init_model(model_spec, spec, data.example_shape, data.n_classes).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay
    )
    amp = cuda and spec.mixed_precision != "none"
    dtype = torch.bfloat16 if spec.mixed_precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and spec.mixed_precision == "fp16")
    train = TensorDataset(torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    loader = DataLoader(
        train,
        sampler=BatchSampler(RandomSampler(train), spec.batch_size, drop_last=False),
        batch_size=None,  # the sampler yields whole batches: one gather per batch
        pin_memory=cuda,
    )
    x_val = torch.from_numpy(data.x_val).to(device)
    y_val = torch.from_numpy(data.y_val).to(device)
    rows = len(data.x_train)
    epochs, started, accuracy = 0, 0.0, 0.0
    while True:
        model.train()
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = F.cross_entropy(model(xb), yb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        model.eval()
        with torch.inference_mode():
            accuracy = float((model(x_val).argmax(1) == y_val).float().mean())
        epochs += 1
        now = time.perf_counter()
        if epochs == 1:
            started = now
        elif now - started >= seconds:
            break
    return _line("plain", device, rows * (epochs - 1), now - started, epochs, accuracy)


def run_project(
    model_spec: CNNSpec,
    spec: TrainingSpec,
    data: TrainData,
    device: torch.device,
    seconds: float,
    side: str = "project",
) -> dict[str, Any]:
    model = init_model(model_spec, spec, data.example_shape, data.n_classes).to(device)
    ends: list[float] = []
    accuracy = [0.0]

    def on_epoch(
        epoch: int, metrics: dict[str, float], last: bool, snapshot: Callable[[], TrainState]
    ) -> None:
        ends.append(time.perf_counter())
        accuracy[0] = metrics["val_accuracy"]
        if len(ends) > 1 and ends[-1] - ends[0] >= seconds:
            raise _Enough

    with contextlib.suppress(_Enough):
        fit(model, data, spec, "val_accuracy", "max", on_epoch, device=device)
    rows = len(data.x_train)
    return _line(side, device, rows * (len(ends) - 1), ends[-1] - ends[0], len(ends), accuracy[0])


def _line(
    side: str, device: torch.device, samples: int, seconds: float, epochs: int, acc: float
) -> dict[str, Any]:
    return {
        "side": side,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "epochs": epochs,
        "samples_per_s": round(samples / seconds, 1),
        "timed_s": round(seconds, 3),
        "val_accuracy": round(acc, 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per side")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--side", type=int, default=32, help="image side in pixels (3 channels)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--precision", choices=["none", "fp16", "bf16"], default="fp16")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.side, args.batch_size, args.seconds = 512, 8, 64, min(args.seconds, 0.5)
    want = args.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(want)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))

    model_spec = CNNSpec(architecture="cnn", channels=[32, 64, 128] if not args.quick else [8])
    spec = TrainingSpec(
        optimizer="adam",
        learning_rate=1e-3,
        batch_size=args.batch_size,
        epochs=1000,  # the time limit ends each side
        mixed_precision=args.precision,
    )
    data = images(args.rows, args.side, 3, 10)
    lines = [
        run_plain(model_spec, spec, data, device, args.seconds),
        run_project(model_spec, spec, data, device, args.seconds),
    ]
    if device.type == "cuda":
        # The same loop with the split forced through pinned host buffers.
        keep = jobs.train.DEVICE_RESIDENT_FRACTION
        jobs.train.DEVICE_RESIDENT_FRACTION = 0.0
        try:
            lines.append(
                run_project(model_spec, spec, data, device, args.seconds, "project-pinned")
            )
        finally:
            jobs.train.DEVICE_RESIDENT_FRACTION = keep
    for line in lines:
        print(json.dumps(line), flush=True)
    plain = lines[0]["samples_per_s"]
    ratio = {
        "ratio": "project / plain samples/s",
        **{line["side"]: round(line["samples_per_s"] / plain, 3) for line in lines[1:]},
        "rows": args.rows,
        "image": [3, args.side, args.side],
        "batch_size": args.batch_size,
        "precision": args.precision if device.type == "cuda" else "none (cpu)",
    }
    print(json.dumps(ratio), flush=True)
    return {"lines": lines, "ratio": ratio}


if __name__ == "__main__":
    main()
