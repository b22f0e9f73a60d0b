"""Trials that span several workers: PyTorch DDP under Ray Train v2, inside a Tune trial.

Ray 2.60 runs Train v2, where a ``TorchTrainer`` can no longer be handed to ``Tuner``; the
supported pattern is what this module does: the Tune function trainable builds a
``TorchTrainer`` whose workers run :func:`jobs.train.fit` on their shard of the data, and
``TuneReportCallback`` forwards rank 0's reports (global figures: see ``fit``) to Tune.
Checkpoints are written by rank 0 only; the Train run restores them after a worker failure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from jobs.checkpoint import load_checkpoint, save_checkpoint
from jobs.spec import JobSpec
from jobs.train import TrainData, TrainState, fit, init_model

# TuneReportCallback hands Tune the checkpoint's path as a metric (not as a Tune checkpoint).
CHECKPOINT_PATH_KEY = "checkpoint_path"


def worker_loop(cfg: dict[str, Any]) -> None:
    """Runs in each Ray Train worker: one rank of a data-parallel trial."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec = JobSpec.model_validate(cfg["spec_json"])
    data: TrainData = cfg["data"]
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    # Same seed on every rank: identical initial weights, and DDP keeps them identical.
    model = init_model(
        spec.model, spec.training, data.example_shape, data.task.n_outputs, data.init_state
    )
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    resume: TrainState | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_checkpoint(Path(folder))
    start_epoch = resume.epoch if resume is not None else 0

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def on_epoch(epoch: int, metrics: dict[str, float], last: bool, snapshot: Any) -> None:
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
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(report)

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


def run_data_parallel(spec: JobSpec, data: TrainData, storage: Path, name: str) -> None:
    """Train one trial on ``resources.workers_per_trial`` workers; blocks until it ends."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = spec.resources
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker > 0:
        per_worker["GPU"] = r.gpus_per_worker
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"spec_json": spec.model_dump(mode="json"), "data": data},
        scaling_config=ScalingConfig(
            num_workers=r.workers_per_trial,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # v2 callback, v1 stub
            failure_config=FailureConfig(max_failures=spec.search.max_failures),
        ),
    )
    trainer.fit()
