"""Search overhead: wall time of a search over the compute its trials did, and where the
rest goes.

    .venv/bin/python -m benchmarks.search_overhead [--trials 8] [--concurrent 2]

8 trials of ~5 s of training each (an MLP, 16 epochs of 48,000 synthetic rows, 1 CPU per
trial), 2 at a time, through `jobs.search.run_search`, the code a job's driver runs. The
ideal wall time is sum(in-trial compute) / concurrency; the ratio wall / ideal is the
overhead factor (target <= 1.5 on 2 cores). The breakdown uses the trials' own reports:
trial start (Tune launching a trial until its first epoch began), reporting and
checkpointing (between one epoch's end and the next one's start), set-up and teardown.
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import tempfile
import time
from pathlib import Path

import ray

from benchmarks._common import EventCollector, synthetic
from jobs.events import EventSink
from jobs.search import run_search
from jobs.spec import JobSpec


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--rows", type=int, default=60_000)
    args = p.parse_args()

    t0 = time.perf_counter()
    ray.init(
        address="local", num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False
    )
    ray_start = time.perf_counter() - t0
    data = synthetic(args.rows, 32)
    spec = JobSpec.model_validate(
        {
            "name": "overhead",
            "dataset": {"id": "d", "target": "y"},
            "model": {"hidden_sizes": [128, 64]},
            "training": {"epochs": args.epochs, "batch_size": 128},
            "search": {
                "space": {"training.learning_rate": {"loguniform": [1e-4, 1e-2]}},
                "num_trials": args.trials,
                "max_concurrent": args.concurrent,
            },
        }
    )
    events = EventCollector()
    sink = EventSink(events.url, "bench", "token")
    started, started_wall = time.perf_counter(), time.time()
    run_search(spec, data, Path(tempfile.mkdtemp()), "overhead", sink, secrets.token_bytes(32))
    wall = time.perf_counter() - started
    ended_wall = time.time()
    sink.close()
    ray.shutdown()

    epochs = [e["data"] for e in events.of("trial.epoch")]
    compute = sum(e["metrics"]["epoch_seconds"] for e in epochs)
    ideal = compute / args.concurrent
    per_trial: dict[str, list[dict]] = {}
    for e in events.of("trial.epoch"):
        per_trial.setdefault(e["data"]["trial_id"], []).append(e)
    starts = {e["data"]["trial_id"]: e["ts"] for e in events.of("trial.started")}
    # trial start: from Tune starting the trial to the end of its first epoch, minus that
    # epoch's compute; reporting: the gaps between consecutive epochs, minus compute.
    trial_start = sum(
        evs[0]["ts"] - starts[t] - evs[0]["data"]["metrics"]["epoch_seconds"]
        for t, evs in per_trial.items()
    )
    reporting = sum(
        b["ts"] - a["ts"] - b["data"]["metrics"]["epoch_seconds"]
        for evs in per_trial.values()
        for a, b in itertools.pairwise(evs)
    )
    first_start = min(starts.values())
    last_epoch = max(e["ts"] for e in events.of("trial.epoch"))
    print(
        f"{args.trials} trials x {args.epochs} epochs, {args.concurrent} concurrent, "
        f"{args.rows} rows"
    )
    print(f"  ray.init (local cluster)              {ray_start:7.2f} s (not in the wall time)")
    print(f"  search wall time (run_search)         {wall:7.2f} s")
    print(
        f"  in-trial compute (sum of epochs)      {compute:7.2f} s "
        f"({compute / args.trials:.2f} s per trial)"
    )
    print(f"  ideal wall (compute / concurrency)    {ideal:7.2f} s")
    print("  where the rest goes (summed over trials, so divide by concurrency for wall):")
    print(
        f"    trial start (launch -> 1st epoch)   {trial_start:7.2f} s "
        f"({trial_start / args.trials:.2f} s per trial)"
    )
    print(
        f"    reporting + checkpoint, per epoch   {reporting:7.2f} s "
        f"({reporting / max(len(epochs) - len(per_trial), 1) * 1000:.0f} ms per epoch)"
    )
    print(f"    set-up (run_search -> 1st trial)    {first_start - started_wall:7.2f} s")
    print(f"    teardown (last epoch -> return)     {ended_wall - last_epoch:7.2f} s")
    rest = (
        wall
        - ideal
        - (first_start - started_wall)
        - (ended_wall - last_epoch)
        - (trial_start + reporting) / args.concurrent
    )
    print(
        f"    unaccounted (between trials: a slot's trial ends, the next one starts) {rest:.2f} s"
    )
    print(f"\nratio wall / ideal: {wall / ideal:.2f}x (target <= 1.5)")


if __name__ == "__main__":
    main()
