"""Trials that span several workers: PyTorch DDP under Ray Train v2, inside a Tune trial.

Ray 2.60 runs Train v2, where a ``TorchTrainer`` can no longer be handed to ``Tuner``; the
supported pattern is what this module does: the Tune function trainable builds a
``TorchTrainer`` whose workers run :func:`jobs.train.fit` on their shard of the data, and
``TuneReportCallback`` forwards rank 0's reports (global figures: see ``fit``) to Tune.
Checkpoints are written by rank 0 only; the Train run restores them after a worker failure.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jobs.checkpoint import load_checkpoint, save_checkpoint
from jobs.spec import JobSpec
from jobs.train import TrainData, TrainState, fit, init_model

# TuneReportCallback hands Tune the checkpoint's path as a metric (not as a Tune checkpoint).
CHECKPOINT_PATH_KEY = "checkpoint_path"

# The Train controller learns of reports and of the workers' end by polling them, every 2 s by
# default: up to 2 s of every trial's teardown and of each epoch's way to Tune was waiting.
# Two polls a second cost two small actor calls each (benchmarks/train_parity.py).
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
POLL_INTERVAL_S = "0.5"

Mark = Callable[..., None]


def _process_started() -> float:
    """This process's start, in wall-clock seconds (Linux; NaN elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return float("nan")


def marker(path: str | None, **fields: Any) -> Mark:
    """Appends ``{"mark": name, "t": wall-clock time, ...}`` lines to ``path``, where
    benchmarks/train_parity.py reads where a trial's fixed cost goes; without a path it does
    nothing (a job's trials)."""
    if not path:
        return lambda name, **more: None

    def mark(name: str, **more: Any) -> None:
        line = json.dumps({"mark": name, "t": time.time(), **fields, **more}) + "\n"
        with open(path, "a") as f:  # one short append per line: whole lines from every rank
            f.write(line)

    return mark


def worker_loop(cfg: dict[str, Any]) -> None:
    """Runs in each Ray Train worker: one rank of a data-parallel trial."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    mark = marker(cfg.get("timings_file"), rank=rank, pid=os.getpid())
    mark("loop_start", process_started=_process_started())
    spec = JobSpec.model_validate(cfg["spec_json"])
    data: TrainData = cfg["data"]
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    # Same seed on every rank: identical initial weights, and DDP keeps them identical.
    model = init_model(
        spec.model, spec.training, data.example_shape, data.task.n_outputs, data.init_state
    )
    mark("model_built")
    model = ray.train.torch.prepare_model(model)
    mark("model_prepared")
    device = ray.train.torch.get_device()
    resume: TrainState | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder))
    start_epoch = resume.epoch if resume is not None else 0
    mark("model_ready")

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def on_epoch(epoch: int, metrics: dict[str, float], last: bool, snapshot: Any) -> None:
        mark("epoch_end", epoch=epoch, epoch_seconds=metrics["epoch_seconds"])
        report = {
            **metrics,
            "epoch": epoch,
            "last": last,
            "start_epoch": start_epoch,
            "pid": os.getpid(),
            "workers": world,
        }
        if rank == 0:
            folder = Path(tempfile.mkdtemp(prefix="crucible-ckpt-"))
            save_checkpoint(folder, snapshot())
            mark("checkpoint_saved", epoch=epoch)
            # Train copies the folder into run storage; the local copy is of no further use.
            ray.train.report(
                report,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                delete_local_checkpoint_after_upload=True,
            )
        else:
            ray.train.report(report)
        mark("reported", epoch=epoch)

    # The global batch stays what the spec says: each of the N workers takes 1/N of it.
    per_worker = spec.training.model_copy(
        update={"batch_size": max(1, spec.training.batch_size // world)}
    )
    fit(
        model,
        data,
        per_worker,
        spec.search.resolved_metric,
        spec.search.resolved_mode,
        on_epoch,
        resume=resume,
        max_epochs=spec.search.max_epochs_per_trial,
        shard=(rank, world),
        all_reduce=all_reduce,
        device=device,
    )
    mark("loop_end")


def make_trainer(
    spec: JobSpec,
    data: TrainData,
    storage: Path,
    name: str,
    callbacks: list[Any] | None = None,
    timings_file: str | None = None,
) -> Any:
    """The ``TorchTrainer`` of one data-parallel trial (the benchmark builds the same one)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Read when the trainer's fit starts and passed on to its controller and workers; an
    # operator's own setting wins.
    os.environ.setdefault(POLL_INTERVAL_ENV, POLL_INTERVAL_S)
    r = spec.resources
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker > 0:
        per_worker["GPU"] = r.gpus_per_worker
    config: dict[str, Any] = {"spec_json": spec.model_dump(mode="json"), "data": data}
    if timings_file:
        config["timings_file"] = timings_file
    return TorchTrainer(
        worker_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=r.workers_per_trial,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=spec.search.max_failures),
        ),
    )


def run_data_parallel(spec: JobSpec, data: TrainData, storage: Path, name: str) -> None:
    """Train one trial on ``resources.workers_per_trial`` workers; blocks until it ends."""
    from ray.tune.integration.ray_train import TuneReportCallback

    make_trainer(spec, data, storage, name, callbacks=[TuneReportCallback()]).fit()
