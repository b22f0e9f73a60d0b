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
epochs: start-up of the workers and the process group, the per-epoch report and rank 0's
checkpoint (the product's path checkpoints every epoch; the torch side does not), teardown.
Targets (issue 4): per-epoch ratio <= 1.05, fixed cost <= 5 s.
"""

from __future__ import annotations

import argparse
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


def run_ray(spec: JobSpec, data: TrainData) -> tuple[float, list[float]]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.distributed import worker_loop

    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"spec_json": spec.model_dump(mode="json"), "data": data},
            scaling_config=ScalingConfig(
                num_workers=spec.resources.workers_per_trial,
                resources_per_worker={"CPU": spec.resources.cpus_per_worker},
            ),
            run_config=RunConfig(name="parity", storage_path=str(Path(storage))),
        )
        started = time.perf_counter()
        result = trainer.fit()
        wall = time.perf_counter() - started
    history = result.metrics_dataframe
    seconds = [float(s) for s in history["epoch_seconds"]] if history is not None else []
    return wall, seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--rows", type=int, default=120_000)
    args = p.parse_args()

    import ray

    spec = spec_for(args.workers, args.epochs)
    data = synthetic(args.rows, 64)
    torch_wall, torch_epochs = run_torch(spec, data)
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_wall, ray_epochs = run_ray(spec, data)
    ray.shutdown()

    def steady(s: list[float]) -> float:
        return statistics.median(s[1:] if len(s) > 1 else s)

    t_epoch, r_epoch = steady(torch_epochs), steady(ray_epochs)
    fixed = ray_wall - sum(ray_epochs)
    print(
        f"{args.workers} workers x 1 CPU, gloo, MLP [256, 128], {args.rows} synthetic rows "
        f"(80% train), {args.epochs} epochs, global batch 256"
    )
    print(f"  torch.distributed  wall {torch_wall:7.2f} s   epoch (median of 2..) {t_epoch:.3f} s")
    print(f"  Ray Train          wall {ray_wall:7.2f} s   epoch (median of 2..) {r_epoch:.3f} s")
    print(f"  per-epoch ratio Ray / torch: {r_epoch / t_epoch:.3f}   (target <= 1.05)")
    print(f"  Ray fixed cost (wall - epochs): {fixed:.2f} s   (target <= 5 s)")
    print(f"  torch fixed cost (wall - epochs): {torch_wall - sum(torch_epochs):.2f} s")


if __name__ == "__main__":
    main()
