"""The hyperparameter search: a job's search space as a Ray Tune experiment.

Each trial is a plain Tune function trainable running :func:`jobs.train.fit` in one worker
process (jobs/trial.py). Design notes §6 measured why: the same four tiny trials took 9.6 s
this way and 85 s with a Ray Train ``TorchTrainer`` per trial, so Ray Train is kept for trials
that really span several workers.

This module is the driver's side of the search and imports no torch before the search ends:
the driver starts its search without waiting for that import (docs/benchmarks.md, "Job
latency"); the trials import it in their own processes.

Every epoch leaves a checkpoint of the whole training state (jobs/checkpoint.py). That one
mechanism serves four needs: a trial whose worker dies resumes where it was, HyperBand pauses
and resumes trials, PBT copies a good trial's state into a weaker one, and a trial stopped
early by a scheduler still has its best weights on record.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import ConcurrencyLimiter, SearchAlgorithm, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from jobs import tune_state
from jobs.events import EventSink
from jobs.spec import Domain, JobSpec, SearchSpec, effective_spec
from jobs.train_data import TrainData

if TYPE_CHECKING:
    import torch

    from jobs.checkpoint import StateDict

# The figures a trial reports each epoch (Tune adds its own bookkeeping keys to results).
# Per-epoch figures forwarded to the control plane (each task reports its own subset).
EPOCH_METRICS = (
    "train_loss",
    "val_loss",
    "val_accuracy",
    "val_f1_macro",
    "val_mae",
    "val_rmse",
    "val_r2",
    "val_auc",
    "lr",
    "epoch_seconds",
)
# Tune's "training_iteration" counts reports, which restarts need not keep equal to epochs;
# schedulers measure progress in the epoch the trial itself reports.
TIME_ATTR = "epoch"


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


class SpaceCodec:
    """Maps the spec's search space to Tune domains and sampled configs back to spec values.

    Optuna only samples plain values, so a choice among lists (``hidden_sizes``) is searched
    by index and decoded before a trial sees it; everything else passes through unchanged.
    """

    def __init__(self, space: dict[str, Domain]) -> None:
        self.space = space
        self.indexed = {
            path
            for path, d in space.items()
            if any(not _plain(v) for v in (d.choice if d.choice is not None else d.grid) or [])
        }

    def domain(self, path: str) -> Any:
        d = self.space[path]
        values = d.choice if d.choice is not None else d.grid
        if values is not None:
            options = list(range(len(values))) if path in self.indexed else values
            return tune.grid_search(options) if d.grid is not None else tune.choice(options)
        if d.uniform is not None:
            return tune.uniform(*d.uniform)
        if d.loguniform is not None:
            return tune.loguniform(*d.loguniform)
        assert d.randint is not None
        return tune.randint(*d.randint)

    def param_space(self, grid: bool) -> dict[str, Any]:
        out = {}
        for path, d in self.space.items():
            if grid and d.choice is not None:  # algorithm grid: choices are grid axes too
                values = list(range(len(d.choice))) if path in self.indexed else d.choice
                out[path] = tune.grid_search(values)
            else:
                out[path] = self.domain(path)
        return out

    def encode(self, point: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for path, value in point.items():
            d = self.space[path]
            values = d.choice if d.choice is not None else d.grid
            out[path] = values.index(value) if path in self.indexed and values else value
        return out

    def decode(self, config: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for path, value in config.items():
            if path in self.indexed:
                d = self.space[path]
                values = d.choice if d.choice is not None else d.grid
                assert values is not None
                value = values[int(value)]
            out[path] = value
        return out


def train_one_trial(config: dict[str, Any], *, spec_json: dict[str, Any], data: TrainData) -> None:
    """Tune function trainable: train one sampled configuration, report every epoch
    (jobs/trial.py, imported here, in the trial's process: the driver that hands this function
    to Tune never imports torch before its search)."""
    from jobs.trial import train

    train(config, spec_json=spec_json, data=data)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILURE_HEADER = re.compile(r"^Failure # \d+ \(occurred at [^)]*\)$", re.MULTILINE)
_QUALIFIED = re.compile(r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*(?:Error|Exception|Exit)\b)")


def trial_error_text(trial: Trial) -> str:
    """What a trial's latest failure says, read from the text Tune appended to the trial's
    error.txt on the driver's disk just before calling back. Not ``get_pickled_error()``:
    error.pkl is a pickle, and the copy it reads in the artifact store is the previous
    sync's, so it gave the failure before this one, or none."""
    path = trial.error_file
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        text = ""
    blocks = _FAILURE_HEADER.split(_ANSI.sub("", text))
    block = blocks[-1].strip("\n") if len(blocks) > 1 else ""
    if not block.strip():
        return "trial failed (no error recorded)"
    lines = block.splitlines()
    # A Python traceback (the trial's own exception): its message is what follows the last
    # frame, which is the frame's '  File ...' line and its indented source and carets.
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if frames:
        rest = lines[frames[-1] + 1 :]
        while rest and rest[0][:1].isspace():
            rest = rest[1:]
        if rest:
            lines = rest
    # "jobs.train.TrainingError: ..." reads as "TrainingError: ...", as Python prints builtins.
    return _QUALIFIED.sub(r"\1", "\n".join(lines).strip())


# The driver's live connections to the control plane, by experiment name. Tune pickles the
# run config (callbacks included) into the experiment folder; when a new driver restores the
# experiment, the unpickled callback finds that driver's sink here.
_SINKS: dict[str, EventSink] = {}


# How long no trial may run while some wait for resources before the job says it is waiting:
# longer than the gap between one trial ending and the next starting on a busy cluster.
WAIT_NOTICE_S = float(os.environ.get("CRUCIBLE_WAIT_NOTICE_S", "5"))


def trial_needs(spec: JobSpec) -> dict[str, float]:
    """What one trial takes from the cluster in all (every worker of a data-parallel one)."""
    r = spec.resources
    return {
        "CPU": r.workers_per_trial * r.cpus_per_worker,
        "GPU": r.workers_per_trial * r.gpus_per_worker,
    }


def waiting_reason(needs: dict[str, float]) -> str:
    """Why a trial cannot start, in the cluster's own figures at this moment."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    wanted = {k: v for k, v in needs.items() if v > 0}
    what = ", ".join(f"{v:g} {k}" for k, v in wanted.items())
    has = ", ".join(f"{free.get(k, 0.0):g} of {total.get(k, 0.0):g} {k} free" for k in wanted)
    if any(total.get(k, 0.0) < v for k, v in wanted.items()):
        # Submission refuses this on a fixed cluster: here the cluster autoscales.
        return f"waiting for the autoscaler: a trial needs {what}; the cluster has {has}"
    return (
        f"waiting for resources: a trial needs {what}; the cluster has {has} "
        "(other work holds them)"
    )


def resources_pending() -> bool:
    """Whether a placement group of this job waits for resources. A PENDING trial whose group
    is placed is starting (its actor importing torch), not waiting: saying "waiting for
    resources" then would send people looking for a shortage that is not there."""
    import ray
    from ray.util.placement_group import placement_group_table

    # A placement group's id ends with the id of the job that created it.
    job = ray.get_runtime_context().get_job_id()
    return any(
        pg_id.endswith(job) and pg.get("state") == "PENDING"
        for pg_id, pg in placement_group_table().items()
    )


class ProgressCallback(tune.Callback):
    """Forwards Tune's trial lifecycle to the control plane as progress events."""

    def __init__(self, name: str, codec: SpaceCodec, needs: dict[str, float] | None = None) -> None:
        self.name = name
        self.codec = codec
        self.needs = needs or {}
        self._idle_since: float | None = None  # no trial running, some pending, since then
        self._waiting_since: float | None = None  # job.waiting sent for this idle spell

    @property
    def sink(self) -> EventSink:
        return _SINKS[self.name]

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "codec": self.codec, "needs": self.needs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["codec"], state.get("needs"))  # type: ignore[misc]

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        # Tune catches a failed resume (a state file refused while it read it) and starts
        # the search over; this runs right after, before any trial, and fails the job.
        tune_state.check(self.name)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Says when the search has stalled for resources (``job.waiting``) and when it goes
        on (``job.resumed``): a trial left PENDING with none running is otherwise silent."""
        now = time.time()
        stalled = not any(t.status == Trial.RUNNING for t in trials) and any(
            t.status == Trial.PENDING for t in trials
        )
        if not stalled:
            self._idle_since = None
            if self._waiting_since is not None:
                since, self._waiting_since = self._waiting_since, None
                self.sink.emit(
                    "job.resumed", f"job.resumed:{since:.3f}", since=since, waited_s=now - since
                )
            return
        if self._idle_since is None:
            self._idle_since = now
        elif (
            self._waiting_since is None
            and now - self._idle_since >= WAIT_NOTICE_S
            and resources_pending()
        ):
            self._waiting_since = since = self._idle_since
            # The key is the spell's start: a resent event is stored once, a later spell anew.
            self.sink.emit(
                "job.waiting",
                f"job.waiting:{since:.3f}",
                reason=waiting_reason(self.needs),
                since=since,
            )

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.sink.emit(
            "trial.started",
            f"trial.started:{trial.trial_id}",
            trial_id=trial.trial_id,
            # Trial ids are random with a searcher; the creation order is the useful number.
            number=trials.index(trial),
            config=self.codec.decode(dict(trial.config)),
        )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        epoch = int(result["epoch"])
        self.sink.emit(
            "trial.epoch",
            f"trial.epoch:{trial.trial_id}:{epoch}",
            trial_id=trial.trial_id,
            epoch=epoch,
            metrics={k: float(result[k]) for k in EPOCH_METRICS if k in result},
            start_epoch=int(result.get("start_epoch", 0)),
            pid=result.get("pid"),
            # PBT changes a trial's hyperparameters as it goes; keep what this epoch used: the
            # result's config comes from the trial process (trial.config may be the next one).
            config=self.codec.decode(dict(result.get("config") or trial.config)),
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        last = trial.last_result or {}
        if last.get("last", False):
            self.sink.emit(
                "trial.finished", f"trial.finished:{trial.trial_id}", trial_id=trial.trial_id
            )
        else:
            # Ended by the scheduler or the time budget before its own last epoch.
            self.sink.emit(
                "trial.stopped",
                f"trial.stopped:{trial.trial_id}",
                trial_id=trial.trial_id,
                epoch=int(last.get("epoch", 0)),
            )

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        failures = trial.run_metadata.num_failures
        self.sink.emit(
            "trial.recovered",
            f"trial.recovered:{trial.trial_id}:{failures}",
            trial_id=trial.trial_id,
            failures=failures,
            error=trial_error_text(trial),
        )

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.sink.emit(
            "trial.failed",
            f"trial.failed:{trial.trial_id}",
            trial_id=trial.trial_id,
            error=trial_error_text(trial),
        )


def make_scheduler(s: SearchSpec, codec: SpaceCodec, max_epochs: int) -> TrialScheduler:
    if s.scheduler == "asha":
        return ASHAScheduler(
            time_attr=TIME_ATTR, max_t=max_epochs, grace_period=1, reduction_factor=2
        )
    if s.scheduler == "hyperband":
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=max_epochs, reduction_factor=2)
    if s.scheduler == "median":
        return MedianStoppingRule(time_attr=TIME_ATTR, grace_period=1, min_samples_required=2)
    if s.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr=TIME_ATTR,
            perturbation_interval=s.pbt_interval,
            hyperparam_mutations={p: codec.domain(p) for p in s.space},
            # The bottom quarter of a small population is one trial at most, often none that
            # is due for a perturbation; below 8 trials exploit the bottom half.
            quantile_fraction=0.25 if s.num_trials >= 8 else 0.5,
            # Synchronous: the population waits at each interval and the bottom part always
            # exploits the top, rather than whenever one happens to be due (reproducible).
            synch=True,
        )
    return FIFOScheduler()


def make_search_alg(s: SearchSpec, codec: SpaceCodec, mode: str) -> SearchAlgorithm | Searcher:
    points = [codec.encode(p) for p in s.points_to_evaluate] or None
    if s.algorithm == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(
            metric=s.resolved_metric,
            mode=mode,
            points_to_evaluate=points,
            sampler=TPESampler(seed=s.seed),
        )
        return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)
    # Tune applies max_concurrent_trials only to Searchers; the variant generator limits itself.
    # HyperBand and synchronous PBT pause trials until their whole bracket or population has
    # caught up: a limit counting paused trials would wait forever, so there only the
    # cluster's resources bound how many train at once.
    if s.scheduler in ("hyperband", "pbt"):
        return BasicVariantGenerator(points_to_evaluate=points, random_state=s.seed)
    return BasicVariantGenerator(
        points_to_evaluate=points, random_state=s.seed, max_concurrent=s.max_concurrent
    )


@dataclass(frozen=True)
class BestTrial:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    state: StateDict


class SearchFailed(RuntimeError):
    pass


def run_search(
    spec: JobSpec, data: TrainData, storage: Path, name: str, sink: EventSink, state_key: bytes
) -> BestTrial:
    """Run the job's search on the Ray cluster this process is connected to; ``state_key``
    signs the search's saved state (:func:`jobs.tune_state.state_key`)."""
    # Checkpointing every epoch of small trials is the design, not a bottleneck to warn of.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    s = spec.search
    codec = SpaceCodec(s.space)
    grid = s.algorithm == "grid"
    # With nothing to search every trial would be the same, and a grid sets its own count.
    num_trials = 1 if grid or not s.space else s.num_trials
    max_epochs = min(spec.training.epochs, s.max_epochs_per_trial or spec.training.epochs)
    if "training.epochs" in s.space:
        max_epochs = max(int(v) for v in s.space["training.epochs"].candidates())
    r = spec.resources
    # A data-parallel trial only coordinates: its Ray Train workers reserve the resources.
    # (Tune refuses an empty request; a byte of memory is the smallest non-empty one.)
    trial_resources = (
        {"cpu": 0.0, "memory": 1.0}
        if r.workers_per_trial > 1
        else {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}
    )
    trainable = tune.with_resources(
        tune.with_parameters(train_one_trial, spec_json=spec.model_dump(mode="json"), data=data),
        trial_resources,
    )
    _SINKS[name] = sink
    experiment = storage / name
    # Tune pickles the search's state into the artifact store and unpickles it to restore:
    # through this filesystem every such file is signed by this job's driver and read back
    # only once it verifies (jobs/tune_state.py).
    fs = tune_state.signed_filesystem(storage, state_key)
    try:
        if tune.Tuner.can_restore(str(experiment), storage_filesystem=fs):
            # A driver before this one died mid-search: pick its experiment up where it was.
            # Finished trials keep their results; running ones resume from their checkpoints.
            # Refused (the job fails) when any state file is not as this job's driver wrote
            # it: the state cannot be trusted, and hiding that behind a fresh search would
            # leave the changed files in place and the tampering unseen.
            tune_state.verify_experiment(fs, experiment)
            sink.emit("job.running", f"job.restored:{os.getpid()}", stage="restore")
            tuner = tune.Tuner.restore(
                str(experiment),
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=True,
                storage_filesystem=fs,
            )
        else:
            tuner = _new_tuner(spec, trainable, codec, storage, fs, name, num_trials, max_epochs)
        results = tuner.fit()
        tune_state.check(name)
    except tune_state.StateRefused as exc:
        raise SearchFailed(
            f"the search's saved state failed verification, so none of it was loaded: {exc}; "
            "submit the job again to start a fresh search"
        ) from exc
    _prune_checkpoints(results)
    return _best_of(results, spec, codec, sink)


def _new_tuner(
    spec: JobSpec,
    trainable: Any,
    codec: SpaceCodec,
    storage: Path,
    fs: pyarrow.fs.FileSystem,
    name: str,
    num_trials: int,
    max_epochs: int,
) -> tune.Tuner:
    s = spec.search
    mode = s.resolved_mode
    grid = s.algorithm == "grid"
    search_alg = make_search_alg(s, codec, mode)
    return tune.Tuner(
        trainable,
        param_space=codec.param_space(grid),
        tune_config=tune.TuneConfig(
            metric=s.resolved_metric,
            mode=mode,
            num_samples=num_trials,
            search_alg=search_alg,
            scheduler=make_scheduler(s, codec, max_epochs),
            time_budget_s=s.time_budget_s,
            # A new trial reuses a finished trial's worker process: no process start, no
            # second import of torch (~1-2 s a trial on 2 cores; benchmarks/search_overhead.py).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            storage_filesystem=fs,
            callbacks=[ProgressCallback(name, codec, trial_needs(spec))],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            # PBT restores trials from others' older checkpoints: keep them all there (until
            # _prune_checkpoints). Otherwise two, which also makes Tune snapshot the
            # experiment every two checkpoints, so a restored driver loses little work.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if s.scheduler == "pbt" else 2
            ),
        ),
    )


def _best_of(
    results: tune.ResultGrid, spec: JobSpec, codec: SpaceCodec, sink: EventSink
) -> BestTrial:
    s = spec.search
    mode, metric = s.resolved_mode, s.resolved_metric
    every = [results[i] for i in range(len(results))]
    for r in every:
        m = r.metrics or {}
        if r.error is None and m and not m.get("last", False):
            # Tune stops trials at the time budget without calling on_trial_complete; the
            # event key is the callback's, so a trial reported both ways is stored once.
            sink.emit(
                "trial.stopped",
                f"trial.stopped:{m['trial_id']}",
                trial_id=m["trial_id"],
                epoch=int(m.get("epoch", 0)),
            )
    ok = [r for r in every if r.error is None and _checkpoint_dir(r) is not None]
    if not ok:
        errors = [str(getattr(r.error, "cause", None) or r.error) for r in every if r.error]
        if errors:
            raise SearchFailed(f"all {len(every)} trials failed; first error: {errors[0]}")
        raise SearchFailed(
            "no trial completed an epoch before the search ended"
            + (f" (search.time_budget_s is {s.time_budget_s:g}s)" if s.time_budget_s else "")
        )
    # The best of the trials that can be served: one that failed after a better epoch has
    # no trustworthy checkpoint of that epoch.
    best = (max if mode == "max" else min)(ok, key=lambda r: _best_value(r, metric, mode))
    folder = _checkpoint_dir(best)
    assert folder is not None
    from jobs.checkpoint import load_checkpoint  # after the search: torch may load now

    state = load_checkpoint(folder)
    df = best.metrics_dataframe
    row: Any = best.metrics or {}
    # The trial's history, when Tune kept it whole (a PBT-restored trial's may restart).
    if df is not None and metric in df and df[metric].notna().any():
        row = df.loc[df[metric].idxmax()] if mode == "max" else df.loc[df[metric].idxmin()]
    return BestTrial(
        trial_id=str((best.metrics or {}).get("trial_id", best.path.rsplit("/", 1)[-1])),
        config=codec.decode(dict(best.config or {})),
        metrics={k: float(row[k]) for k in (*EPOCH_METRICS, "epoch") if k in row},
        state=state.best,
    )


def _best_value(result: Any, metric: str, mode: str) -> float:
    """A trial's best reported value of the metric over all its epochs (NaN never wins)."""
    worst = float("-inf") if mode == "max" else float("inf")
    df = result.metrics_dataframe
    if df is not None and metric in df and df[metric].notna().any():
        values = df[metric].dropna()
        return float(values.max() if mode == "max" else values.min())
    value = (result.metrics or {}).get(metric)
    return worst if value is None or value != value else float(value)


def _prune_checkpoints(results: tune.ResultGrid) -> None:
    """Once the search is over only each trial's latest checkpoint is read (it carries the
    trial's best weights too): drop the older ones the search kept for restores."""
    for i in range(len(results)):
        latest = results[i].checkpoint
        if latest is None:
            continue
        keep = Path(latest.path)
        for folder in keep.parent.glob("checkpoint_*"):
            if folder.is_dir() and folder != keep:
                shutil.rmtree(folder, ignore_errors=True)


def _checkpoint_dir(result: Any) -> Path | None:
    """Where a trial's latest training state is: its Tune checkpoint, or for a data-parallel
    trial the Ray Train checkpoint whose path rank 0 reported."""
    if result.checkpoint is not None:
        return Path(result.checkpoint.path)
    from jobs.distributed import CHECKPOINT_PATH_KEY

    path = (result.metrics or {}).get(CHECKPOINT_PATH_KEY)
    return Path(path) if path else None


def rebuild(
    spec: JobSpec,
    config: dict[str, Any],
    example_shape: tuple[int, ...],
    n_outputs: int,
    state: StateDict,
) -> torch.nn.Module:
    from jobs.models import build_model

    model = build_model(effective_spec(spec, config).model, example_shape, n_outputs)
    model.load_state_dict(state)
    return model
