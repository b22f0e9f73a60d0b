"""Search algorithms, schedulers and fault tolerance on a real local Ray cluster.

Trials are tiny (a few hundred rows, a few epochs); the driver's progress events go over real
HTTP to a small collector standing in for the control plane's event route.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from benchmarks._common import EventCollector
from jobs.events import EventSink
from jobs.search import run_search
from jobs.spec import JobSpec
from jobs.train import TrainData
from jobs.tune_state import state_key


class Collector(EventCollector):
    """The event route's stand-in (benchmarks share it), answering with each event's data."""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e["data"] for e in super().of(kind)]


def blobs(n: int = 600, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 6)) + y[:, None] * 0.8).astype(np.float32)
    cut = int(n * 0.75)
    return TrainData(x[:cut], y[:cut], x[cut:], y[cut:], n_classes=2)


def search(collector: Collector, tmp_path: Path, name: str, **search_spec: Any) -> Any:
    training = search_spec.pop("training", {"epochs": 4, "batch_size": 64})
    resources = search_spec.pop("resources", {})
    spec = JobSpec.model_validate(
        {
            "name": name,
            "dataset": {"id": "d", "target": "y"},
            "model": {"hidden_sizes": [8]},
            "training": training,
            "search": search_spec,
            "resources": resources,
        }
    )
    sink = EventSink(collector.url, name, "token")
    try:
        return run_search(spec, blobs(), tmp_path / "tune", name, sink, KEY)
    finally:
        assert sink.close(30)


def epochs_by_trial(c: Collector) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in c.of("trial.epoch"):
        out.setdefault(e["trial_id"], []).append(e["epoch"])
    return out


KEY = state_key("token")

LR = {"training.learning_rate": {"loguniform": [0.001, 0.05]}}


def test_random_search_with_points_to_evaluate(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    space = {**LR, "model.hidden_sizes": {"choice": [[4], [8, 4]]}}
    point = {"training.learning_rate": 0.0123, "model.hidden_sizes": [8, 4]}
    best = search(
        collector, tmp_path, "random", space=space, num_trials=3, points_to_evaluate=[point]
    )
    started = sorted(collector.of("trial.started"), key=lambda d: d["number"])
    assert len(started) == 3
    assert started[0]["config"] == point  # decoded back from the index Tune searched
    assert all(e == [1, 2, 3, 4] for e in epochs_by_trial(collector).values())
    assert best.config in [d["config"] for d in started]
    assert (
        set(best.state) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
        or best.state
    )


def test_grid_search_tries_every_combination(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    space = {
        "training.learning_rate": {"grid": [0.01, 0.03]},
        "training.optimizer": {"choice": ["adam", "sgd"]},
    }
    search(
        collector,
        tmp_path,
        "grid",
        algorithm="grid",
        space=space,
        training={"epochs": 1, "batch_size": 64},
    )
    configs = {
        (d["config"]["training.learning_rate"], d["config"]["training.optimizer"])
        for d in collector.of("trial.started")
    }
    assert configs == {(0.01, "adam"), (0.01, "sgd"), (0.03, "adam"), (0.03, "sgd")}


def test_optuna_is_seeded(ray_cluster: None, collector: Collector, tmp_path: Path) -> None:
    search(
        collector,
        tmp_path / "a",
        "optuna",
        algorithm="optuna",
        space=LR,
        num_trials=3,
        seed=11,
        max_concurrent=1,
        training={"epochs": 1, "batch_size": 64},
    )
    first = [d["config"] for d in sorted(collector.of("trial.started"), key=lambda d: d["number"])]
    collector.events.clear()
    search(
        collector,
        tmp_path / "b",
        "optuna",
        algorithm="optuna",
        space=LR,
        num_trials=3,
        seed=11,
        max_concurrent=1,
        training={"epochs": 1, "batch_size": 64},
    )
    again = [d["config"] for d in sorted(collector.of("trial.started"), key=lambda d: d["number"])]
    assert len(first) == 3 and first == again


def test_asha_stops_weak_trials_early(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    # Grid order is submission order: the good rates set the bar at each rung before the
    # hopeless ones arrive, so what ASHA stops does not depend on which trial runs faster.
    space = {"training.learning_rate": {"grid": [0.05, 0.03, 1e-7, 2e-7, 3e-7, 5e-7]}}
    search(
        collector,
        tmp_path,
        "asha",
        scheduler="asha",
        algorithm="grid",
        space=space,
        training={"epochs": 8, "batch_size": 64},
    )
    stopped = collector.of("trial.stopped")
    assert stopped, "ASHA stopped no trial"
    by_trial = epochs_by_trial(collector)
    for s in stopped:
        assert s["epoch"] < 8 and by_trial[s["trial_id"]][-1] == s["epoch"]
    assert sum(len(v) for v in by_trial.values()) < 6 * 8


@pytest.mark.parametrize("scheduler", ["hyperband", "median"])
def test_schedulers_run_to_a_result(
    scheduler: str, ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    best = search(
        collector,
        tmp_path,
        scheduler,
        scheduler=scheduler,
        space=LR,
        num_trials=4,
        training={"epochs": 4, "batch_size": 64},
    )
    assert best.metrics["val_accuracy"] > 0.5
    for epochs in epochs_by_trial(collector).values():
        # Paused and resumed trials continue where they stopped: no epoch twice, none skipped.
        assert epochs == list(range(1, len(epochs) + 1))


def test_pbt_perturbs_training_fields(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    search(
        collector,
        tmp_path,
        "pbt",
        scheduler="pbt",
        space=LR,
        num_trials=4,
        pbt_interval=2,
        # The population must train side by side for PBT to compare and copy: all four at
        # once, half a CPU each.
        max_concurrent=4,
        resources={"cpus_per_worker": 0.5},
        training={"epochs": 8, "batch_size": 64},
    )
    first: dict[str, Any] = {}
    for d in collector.of("trial.started"):  # a restarted trial starts again: keep the first
        first.setdefault(d["trial_id"], d["config"])
    changed = [e for e in collector.of("trial.epoch") if e["config"] != first[e["trial_id"]]]
    assert changed, "PBT never exploited/explored"
    # An exploited trial continues from the checkpoint it copied, not from epoch 0.
    assert all(e["start_epoch"] > 0 for e in changed)


def test_time_budget_ends_the_search_with_the_best_so_far(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    best = search(
        collector,
        tmp_path,
        "budget",
        space=LR,
        num_trials=2,
        # The budget counts from the start of the search, trial processes' start-up included
        # (a few seconds each on a quiet machine, over 12 s on a CI machine under load): long
        # enough for an epoch, far too short for 1,000.
        time_budget_s=25,
        training={"epochs": 1000, "batch_size": 32},
    )
    assert time.monotonic() - t0 < 75
    stopped = collector.of("trial.stopped")
    assert stopped and all(s["epoch"] < 1000 for s in stopped)
    assert best.metrics["epoch"] >= 1


def test_killed_worker_resumes_from_its_checkpoint(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    killed: list[int] = []

    def killer() -> None:
        while not killed:
            for e in collector.of("trial.epoch"):
                if e["epoch"] >= 3 and e["pid"]:
                    os.kill(e["pid"], signal.SIGKILL)
                    killed.append(e["epoch"])
                    return
            time.sleep(0.05)

    threading.Thread(target=killer, daemon=True).start()
    search(
        collector,
        tmp_path,
        "kill",
        space={},
        max_failures=2,
        training={"epochs": 12, "batch_size": 8},
    )
    assert killed
    assert collector.of("trial.recovered")
    epochs = [e["epoch"] for e in collector.of("trial.epoch")]
    after = [e for e in collector.of("trial.epoch") if e["start_epoch"] > 0]
    # The restarted worker went on from its last checkpoint, not from epoch 1.
    assert after and after[0]["epoch"] == after[0]["start_epoch"] + 1
    assert after[0]["start_epoch"] >= killed[0] - 1
    assert sorted(set(epochs)) == list(range(1, 13))


def test_two_worker_ddp_trial_matches_one_worker(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    training = {"epochs": 3, "batch_size": 32, "learning_rate": 0.01, "optimizer": "sgd"}
    single = search(collector, tmp_path / "one", "one", space={}, training=training)
    one = collector.of("trial.epoch")
    collector.events.clear()
    ddp = search(
        collector,
        tmp_path / "two",
        "two",
        space={},
        training=training,
        resources={"workers_per_trial": 2, "cpus_per_worker": 1},
    )
    two = collector.of("trial.epoch")
    assert [e["epoch"] for e in two] == [1, 2, 3]
    # Figures are global (loss summed over both shards, validation on the whole split), so
    # the two runs see the same data per epoch and land close together.
    for a, b in zip(one, two, strict=True):
        assert abs(a["metrics"]["val_accuracy"] - b["metrics"]["val_accuracy"]) < 0.06
        assert abs(a["metrics"]["train_loss"] - b["metrics"]["train_loss"]) < 0.1
    assert abs(single.metrics["val_accuracy"] - ddp.metrics["val_accuracy"]) < 0.06
    assert set(ddp.state) == set(single.state)  # rank 0's weights, without DDP's prefix


def test_a_restored_trial_whose_checkpoint_was_replaced_resumes_from_the_newest(
    tmp_path: Path,
) -> None:
    """Tune deletes surplus checkpoints at once but snapshots the experiment lazily: a driver
    restored from the snapshot can be handed a checkpoint that is gone (CI saw it once)."""
    import copy

    from ray import tune

    from jobs.checkpoint import save_checkpoint
    from jobs.spec import MLPSpec, TrainingSpec
    from jobs.train import TrainState, fit, init_model
    from jobs.trial import _resume_state

    data = blobs(200)
    training = TrainingSpec(epochs=3, batch_size=32, seed=1)
    states: list[TrainState] = []
    fit(
        init_model(MLPSpec(hidden_sizes=[4]), training, (6,), 2),
        data,
        training,
        "val_accuracy",
        "max",
        lambda e, m, last, snapshot: states.append(copy.deepcopy(snapshot())),
    )
    trial = tmp_path / "trial"
    for n, state in enumerate(states[:2], start=1):
        save_checkpoint(trial / f"checkpoint_{n:06d}", state)
    (trial / "checkpoint_000003").mkdir()  # the dying driver's half-written copy
    (trial / "checkpoint_000003" / "state.safetensors").write_bytes(b"\x00" * 7)

    assert _resume_state(None) is None
    gone = tune.Checkpoint.from_directory(str(trial / "checkpoint_000000"))
    resumed = _resume_state(gone)
    assert resumed is not None and resumed.epoch == states[1].epoch == 2
    present = _resume_state(tune.Checkpoint.from_directory(str(trial / "checkpoint_000001")))
    assert present is not None and present.epoch == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _resume_state(tune.Checkpoint.from_directory(str(tmp_path / "other" / "checkpoint_1")))


def test_a_search_that_cannot_get_resources_says_it_is_waiting(
    ray_cluster: None, collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another job holds every CPU: the search says what it waits for, then goes on once the
    CPUs are free again."""
    import jobs.search

    monkeypatch.setattr(jobs.search, "WAIT_NOTICE_S", 1.0)

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.remote()  # type: ignore[attr-defined]
    ray.get(hog.ready.remote())
    result: list[Any] = []
    run = threading.Thread(
        target=lambda: result.append(
            search(collector, tmp_path, "wait", space={}, training={"epochs": 2, "batch_size": 64})
        )
    )
    run.start()
    deadline = time.monotonic() + 120
    while not collector.of("job.waiting"):
        assert time.monotonic() < deadline and run.is_alive()
        time.sleep(0.2)
    (waiting,) = collector.of("job.waiting")
    assert waiting["reason"] == (
        "waiting for resources: a trial needs 1 CPU; the cluster has 0 of 2 CPU free "
        "(other work holds them)"
    )
    assert not collector.of("trial.epoch")
    ray.kill(hog)
    run.join(180)
    assert result and result[0].metrics["epoch"] >= 1
    (resumed,) = collector.of("job.resumed")
    assert resumed["since"] == waiting["since"] and resumed["waited_s"] >= 1.0
    # The waiting was said before the trial started, the going on after.
    order = [e["type"] for e in collector.events]
    assert order.index("job.waiting") < order.index("trial.started") <= order.index("job.resumed")


def test_trials_that_are_only_starting_are_not_waiting_for_resources(
    ray_cluster: None, collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial is PENDING while its actor starts (imports torch) on resources already placed:
    that is no shortage, so even with no grace period the job does not say it waits."""
    import jobs.search

    monkeypatch.setattr(jobs.search, "WAIT_NOTICE_S", 0.0)
    search(collector, tmp_path, "starting", space={}, training={"epochs": 1, "batch_size": 64})
    assert collector.of("trial.started")
    assert not collector.of("job.waiting")
