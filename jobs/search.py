"""The hyperparameter search: a job's search space as a Ray Tune experiment.

Each trial is a plain Tune function trainable running :func:`jobs.train.fit` in one worker
process. Design notes §6 measured why: the same four tiny trials took 9.6 s this way and 85 s
with a Ray Train ``TorchTrainer`` per trial, so Ray Train is kept for trials that really span
several workers.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search.basic_variant import BasicVariantGenerator
from safetensors.torch import load_file, save_file

from jobs.events import EventSink
from jobs.models import build_model
from jobs.spec import Domain, JobSpec, effective_spec
from jobs.train import StateDict, TrainData, fit, init_model

CHECKPOINT_WEIGHTS = "weights.safetensors"
# The figures a trial reports each epoch (Tune adds its own bookkeeping keys to results).
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_f1_macro", "epoch_seconds")


def tune_domain(domain: Domain) -> Any:
    if domain.choice is not None:
        return tune.choice(domain.choice)
    if domain.uniform is not None:
        return tune.uniform(*domain.uniform)
    if domain.loguniform is not None:
        return tune.loguniform(*domain.loguniform)
    assert domain.randint is not None
    return tune.randint(*domain.randint)


def trial_number(trial: Trial) -> int:
    return int(trial.trial_id.rsplit("_", 1)[-1])


def train_one_trial(config: dict[str, Any], *, spec_json: dict[str, Any], data: TrainData) -> None:
    """Tune function trainable: train one sampled configuration, report every epoch."""
    spec = effective_spec(JobSpec.model_validate(spec_json), config)
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_trial)))
    model = init_model(spec.model, spec.training, data.x_train.shape[1], data.n_classes)

    def on_epoch(epoch: int, metrics: dict[str, float], last: bool, best: StateDict) -> None:
        checkpoint = None
        if last:
            # Only the final report carries weights: the best epoch's, so the checkpoint
            # matches the score Tune ranks the trial by (scope="all").
            folder = tempfile.mkdtemp(prefix="crucible-ckpt-")
            save_file(best, str(Path(folder) / CHECKPOINT_WEIGHTS))
            checkpoint = tune.Checkpoint.from_directory(folder)
        tune.report({**metrics, "epoch": epoch}, checkpoint=checkpoint)

    fit(model, data, spec.training, spec.search.metric, spec.search.resolved_mode, on_epoch)


def trial_error_text(trial: Trial) -> str:
    try:
        exc = trial.get_pickled_error()
    except Exception:  # the error file itself may be unreadable; say what we can
        exc = None
    if exc is None:
        return "trial failed (no error recorded)"
    cause = getattr(exc, "cause", None) or exc
    return f"{type(cause).__name__}: {cause}"


class ProgressCallback(tune.Callback):
    """Forwards Tune's trial lifecycle to the control plane as progress events."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config into the experiment folder; the live connection to the
        # control plane is not part of it (a restored experiment is given a new sink).
        return {}

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.sink.emit(
            "trial.started",
            f"trial.started:{trial.trial_id}",
            trial_id=trial.trial_id,
            number=trial_number(trial),
            config=dict(trial.config),
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
        )

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.sink.emit(
            "trial.finished", f"trial.finished:{trial.trial_id}", trial_id=trial.trial_id
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


@dataclass(frozen=True)
class BestTrial:
    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    state: StateDict


class SearchFailed(RuntimeError):
    pass


def run_search(
    spec: JobSpec, data: TrainData, storage: Path, name: str, sink: EventSink
) -> BestTrial:
    """Run the job's search on the Ray cluster this process is connected to."""
    s = spec.search
    mode = s.resolved_mode
    # With nothing to search every trial would be the same; one is enough.
    num_trials = s.num_trials if s.space else 1
    trainable = tune.with_resources(
        tune.with_parameters(train_one_trial, spec_json=spec.model_dump(mode="json"), data=data),
        {"cpu": spec.resources.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={path: tune_domain(d) for path, d in s.space.items()},
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=mode,
            num_samples=num_trials,
            max_concurrent_trials=min(s.max_concurrent, num_trials),
            search_alg=BasicVariantGenerator(random_state=s.seed),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=[ProgressCallback(sink)],
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    results = tuner.fit()
    every = [results[i] for i in range(len(results))]
    ok = [r for r in every if r.error is None and r.checkpoint is not None]
    if not ok:
        errors = [str(getattr(r.error, "cause", None) or r.error) for r in every if r.error]
        raise SearchFailed(
            f"all {len(every)} trials failed" + (f"; first error: {errors[0]}" if errors else "")
        )
    best = results.get_best_result(s.metric, mode, scope="all")
    if best.checkpoint is None or best.error is not None:
        raise SearchFailed("the best trial left no checkpoint")
    with best.checkpoint.as_directory() as folder:
        state = load_file(str(Path(folder) / CHECKPOINT_WEIGHTS))
    df = best.metrics_dataframe
    assert df is not None  # a trial with a checkpoint has reported
    row = df.loc[df[s.metric].idxmax()] if mode == "max" else df.loc[df[s.metric].idxmin()]
    return BestTrial(
        trial_id=str((best.metrics or {}).get("trial_id", best.path.rsplit("/", 1)[-1])),
        config=dict(best.config or {}),
        metrics={k: float(row[k]) for k in (*EPOCH_METRICS, "epoch") if k in row},
        state=state,
    )


def rebuild(
    spec: JobSpec, config: dict[str, Any], in_features: int, n_classes: int, state: StateDict
) -> torch.nn.Module:
    model = build_model(effective_spec(spec, config).model, in_features, n_classes)
    model.load_state_dict(state)
    return model
