"""ASHA against plain random search on the built-in Adult data: trial-epochs to the same score.

    .venv/bin/python -m benchmarks.asha_vs_random [--trials 8] [--epochs 10]

Both searches sample the same configurations (same seed); ASHA stops the weak ones early.
Printed for each: the best validation accuracy, the trial-epochs it spent in all, and the
trial-epochs spent (in the order they happened) until it first reached the target score: the
lower of the two bests, so both reach it.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
from pathlib import Path
from typing import Any

import ray

from benchmarks._common import EventCollector
from jobs.events import EventSink
from jobs.prepare import prepare
from jobs.search import run_search
from jobs.spec import JobSpec


def run(scheduler: str, args: argparse.Namespace, data: Any) -> list[dict[str, Any]]:
    spec = JobSpec.model_validate(
        {
            "name": scheduler,
            "dataset": {"id": "ds_builtin_adult", "target": "income"},
            "training": {"epochs": args.epochs, "batch_size": 256},
            "search": {
                "space": {
                    "training.learning_rate": {"loguniform": [1e-5, 3e-2]},
                    "model.hidden_sizes": {"choice": [[16], [64, 32], [128, 64]]},
                },
                "num_trials": args.trials,
                "max_concurrent": 2,
                "scheduler": scheduler,
                "seed": 3,
            },
            "audit": {"sensitive_features": ["sex", "race"]},
        }
    )
    events = EventCollector()
    sink = EventSink(events.url, scheduler, "token")
    run_search(spec, data, Path(tempfile.mkdtemp()), scheduler, sink, secrets.token_bytes(32))
    sink.close()
    return [e["data"] for e in events.of("trial.epoch")]


def epochs_to(target: float, epochs: list[dict[str, Any]]) -> int:
    for i, e in enumerate(epochs, 1):
        if e["metrics"]["val_accuracy"] >= target:
            return i
    return len(epochs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    spec = JobSpec.model_validate(
        {
            "name": "x",
            "dataset": {"id": "d", "target": "income"},
            "audit": {"sensitive_features": ["sex", "race"]},
        }
    )
    data = prepare(spec, "builtin://adult").train
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {s: run(s, args, data) for s in ("none", "asha")}
    ray.shutdown()
    best = {s: max(e["metrics"]["val_accuracy"] for e in ev) for s, ev in results.items()}
    target = min(best.values())
    print(f"Adult, {args.trials} trials x up to {args.epochs} epochs, same sampled configs")
    for s, ev in results.items():
        name = "random (no scheduler)" if s == "none" else "ASHA"
        print(
            f"  {name:<22} best val_accuracy {best[s]:.4f}; trial-epochs in all {len(ev):3d}; "
            f"to reach {target:.4f}: {epochs_to(target, ev):3d}"
        )
    ratio = epochs_to(target, results["asha"]) / epochs_to(target, results["none"])
    total = len(results["asha"]) / len(results["none"])
    print(f"\nASHA / random trial-epochs: to the target {ratio:.2f}x, in all {total:.2f}x")


if __name__ == "__main__":
    main()
