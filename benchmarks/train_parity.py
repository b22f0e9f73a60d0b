"""Data-parallel training: Ray Train against plain torch.distributed, same loop, same data.

    .venv/bin/python -m benchmarks.train_parity [--workers 2] [--epochs 6] [--rows 120000]

Both sides run ``jobs.distributed.worker_loop``'s training code (``jobs.train.fit`` with a
shard per rank, an all-reduce of the loss and DDP on the model) with gloo on the CPU:

- **torch.distributed**: ``torch.multiprocessing`` spawns the ranks, which join a gloo group
  and wrap the model in DistributedDataParallel themselves;
- **Ray Train**: a ``TorchTrainer`` on a local Ray cluster runs ``worker_loop`` itself, as a
  job's data-parallel trial does (``resources.workers_per_trial > 1``).

Per-epoch time is the median of the epochs after the first (the steady state, as each rank
reports it, measured before the epoch's report); the fixed cost is Ray's wall time minus its
epochs. It is split step by step from timestamps: the ranks mark theirs in ``worker_loop``
(given a file to write them to) and a Ray Train callback marks the controller's (start, worker
group, process group, shutdown). The Ray side runs twice on one cluster: with Ray Train's
default poll interval (2 s) and with the product's. Targets (issue 4): per-epoch ratio
<= 1.05, fixed cost <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks._common import synthetic
from jobs.spec import JobSpec
from jobs.train import TrainData, fit, init_model


def spec_for(workers: int, epochs: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "parity",
            "dataset": {"id": "d", "target": "y"},
            "model": {"hidden_sizes": [256, 128]},
            "training": {"epochs": epochs, "batch_size": 256, "learning_rate": 0.001},
            "resources": {"workers_per_trial": workers, "cpus_per_worker": 1},
        }
    )


def _torch_rank(
    rank: int, world: int, port: int, spec_json: dict[str, Any], data: TrainData, out: Any
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    spec = JobSpec.model_validate(spec_json)
    model = init_model(spec.model, spec.training, data.example_shape, data.task.n_outputs)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    per_worker = spec.training.model_copy(update={"batch_size": spec.training.batch_size // world})
    seconds: list[float] = []

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    fit(
        ddp,
        data,
        per_worker,
        "val_accuracy",
        "max",
        lambda e, m, last, snap: seconds.append(m["epoch_seconds"]),
        shard=(rank, world),
        all_reduce=all_reduce,
    )
    if rank == 0:
        out.put(seconds)
    dist.destroy_process_group()


def run_torch(spec: JobSpec, data: TrainData) -> tuple[float, list[float]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    world = spec.resources.workers_per_trial
    port = 29500 + os.getpid() % 1000
    started = time.perf_counter()
    procs = [
        ctx.Process(
            target=_torch_rank, args=(r, world, port, spec.model_dump(mode="json"), data, out)
        )
        for r in range(world)
    ]
    for p in procs:
        p.start()
    seconds = out.get(timeout=1800)
    for p in procs:
        p.join()
    return time.perf_counter() - started, seconds


def controller_marks(path: str) -> Any:
    """A Ray Train callback that runs in the Train controller and marks its steps in ``path``
    (the file the workers mark theirs in). Defined in a function so that it travels by value."""
    from ray.train.v2._internal.execution.callback import (
        ControllerCallback,
        WorkerGroupCallback,
    )

    from jobs.distributed import marker

    class Marks(ControllerCallback, WorkerGroupCallback):
        def __init__(self) -> None:
            self.mark = marker(path, rank="controller")

        def after_controller_start(self, *args: Any) -> None:
            self.mark("controller_started")

        def before_worker_group_start(self, *args: Any) -> None:
            self.mark("worker_group_start")

        def before_init_train_context(self, *args: Any) -> dict[str, list[Any]]:
            self.mark("workers_created")
            return {}

        def after_worker_group_start(self, *args: Any) -> None:
            self.mark("worker_group_ready")

        def after_worker_group_training_start(self, *args: Any) -> None:
            self.mark("train_fn_launched")

        def before_worker_group_shutdown(self, *args: Any) -> None:
            self.mark("shutdown_start")

        def after_worker_group_shutdown(self, *args: Any) -> None:
            self.mark("shutdown_done")

        def after_controller_finish(self, *args: Any) -> None:
            self.mark("controller_finished")

    return Marks()


def run_ray(
    spec: JobSpec, data: TrainData, poll_interval_s: str | None = None
) -> tuple[float, list[float], dict[str, float]]:
    """One data-parallel trial as a job runs it (``make_trainer``), with Ray Train's poll
    interval set to ``poll_interval_s`` (None: the product's)."""
    from jobs.distributed import POLL_INTERVAL_ENV, make_trainer

    os.environ.pop(POLL_INTERVAL_ENV, None)
    if poll_interval_s is not None:
        os.environ[POLL_INTERVAL_ENV] = poll_interval_s
    with tempfile.TemporaryDirectory() as storage:
        marks_file = str(Path(storage) / "marks.jsonl")
        trainer = make_trainer(
            spec,
            data,
            Path(storage),
            "parity",
            callbacks=[controller_marks(marks_file)],
            timings_file=marks_file,
        )
        started = time.time()
        result = trainer.fit()
        ended = time.time()
        marks = [json.loads(line) for line in Path(marks_file).read_text().splitlines()]
    history = result.metrics_dataframe
    seconds = [float(s) for s in history["epoch_seconds"]] if history is not None else []
    return ended - started, seconds, breakdown(marks, started, ended)


def breakdown(marks: list[dict[str, Any]], started: float, ended: float) -> dict[str, float]:
    """Seconds of each step of a data-parallel trial outside its epochs, from the marks."""

    def at(name: str, rank: Any = None, pick: Any = min) -> float:
        return float(
            pick(m["t"] for m in marks if m["mark"] == name and (rank is None or m["rank"] == rank))
        )

    workers = [m for m in marks if m["mark"] == "loop_start"]
    epochs = sorted({m["epoch"] for m in marks if m["mark"] == "epoch_end"})
    # Rank 0's epoch: when its training began (end minus its own epoch time) and ended.
    ends = {m["epoch"]: m for m in marks if m["mark"] == "epoch_end" and m["rank"] == 0}
    reported = {m["epoch"]: m["t"] for m in marks if m["mark"] == "reported" and m["rank"] == 0}
    first_batch = ends[epochs[0]]["t"] - ends[epochs[0]]["epoch_seconds"]
    between = sum(
        (ends[e]["t"] - ends[e]["epoch_seconds"]) - ends[e - 1]["t"] for e in epochs[1:]
    ) + (reported[epochs[-1]] - ends[epochs[-1]]["t"])
    return {
        "controller actor start (driver -> controller running)": at("controller_started") - started,
        "controller set-up (-> worker group start)": at("worker_group_start")
        - at("controller_started"),
        "placement group + worker actors (-> workers created)": at("workers_created")
        - at("worker_group_start"),
        "train context, gloo process group, callbacks": at("worker_group_ready")
        - at("workers_created"),
        "train fn + data to workers (-> loop start, last rank)": max(m["t"] for m in workers)
        - at("worker_group_ready"),
        "  of which worker processes started before the trainer": sum(
            1 for m in workers if m["process_started"] < started
        ),
        "model built, DDP wrap (-> model ready, last rank)": at("model_ready", pick=max)
        - max(m["t"] for m in workers),
        "fit set-up (-> first batch, rank 0)": first_batch - at("model_ready", 0),
        "reports + checkpoints, all epochs (rank 0)": between,
        "loop end (last report -> worker loop returns, rank 0)": at("loop_end", 0)
        - reported[epochs[-1]],
        "controller notices the end (-> shutdown start)": at("shutdown_start")
        - at("loop_end", pick=max),
        "worker group shutdown": at("shutdown_done") - at("shutdown_start"),
        "controller finish + result to the driver": ended - at("shutdown_done"),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rows", type=int, default=120_000)
    p.add_argument("--ray-only", action="store_true", help="skip the torch.distributed side")
    args = p.parse_args()

    import ray

    spec = spec_for(args.workers, args.epochs)
    data = synthetic(args.rows, 64)
    torch_wall, torch_epochs = (math.nan, [math.nan]) if args.ray_only else run_torch(spec, data)
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    # Ray's default poll interval first (the product before), then the product's, one cluster.
    runs = {"before (poll 2 s)": run_ray(spec, data, "2"), "now": run_ray(spec, data)}
    ray.shutdown()

    def steady(s: list[float]) -> float:
        return statistics.median(s[1:] if len(s) > 1 else s)

    t_epoch = steady(torch_epochs)
    print(
        f"{args.workers} workers x 1 CPU, gloo, MLP [256, 128], {args.rows} synthetic rows "
        f"(80% train), {args.epochs} epochs, global batch 256"
    )
    print(f"  torch.distributed  wall {torch_wall:7.2f} s   epoch (median of 2..) {t_epoch:.3f} s")
    print(f"  torch fixed cost (wall - epochs): {torch_wall - sum(torch_epochs):.2f} s")
    for label, (wall, epochs, _) in runs.items():
        r_epoch = steady(epochs)
        print(
            f"  Ray Train, {label:<17} wall {wall:7.2f} s   epoch (median of 2..) {r_epoch:.3f} s"
            f"   per-epoch ratio Ray / torch {r_epoch / t_epoch:.3f} (target <= 1.05)"
            f"   fixed cost (wall - epochs) {wall - sum(epochs):.2f} s (target <= 5 s)"
        )
    labels = list(runs)
    print("  Ray Train fixed cost, step by step (s): " + " | ".join(labels))
    for step in runs[labels[0]][2]:
        row = "  ".join(f"{runs[k][2][step]:7.2f}" for k in labels)
        print(f"    {row}  {step}")
    totals = "  ".join(
        f"{sum(v for k, v in r[2].items() if 'of which' not in k):7.2f}" for r in runs.values()
    )
    print(f"    {totals}  in all")


if __name__ == "__main__":
    main()
