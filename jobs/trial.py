"""One trial of a search, in the trial's own worker process: build the model, resume from the
trial's checkpoint if it has one, train, and report every epoch to Tune with a checkpoint.

Tune runs :func:`jobs.search.train_one_trial`, which imports this module there; with more
than one worker per trial the work goes to Ray Train (jobs/distributed.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray import tune
from safetensors import SafetensorError

from jobs.checkpoint import load_checkpoint, save_checkpoint
from jobs.search import SpaceCodec
from jobs.spec import JobSpec, effective_spec
from jobs.train import TrainData, TrainState, fit, init_model
from jobs.tune_state import is_local


def _resume_state(checkpoint: ray.train.Checkpoint | None) -> TrainState | None:
    """The state a restored trial goes on from.

    Tune deletes a surplus checkpoint as soon as a newer one lands but snapshots the
    experiment lazily, so a driver restored from the snapshot can name a checkpoint that is
    gone. The trial's newest complete checkpoint on disk is then the right one: it is further
    along and resumes just as exactly.
    """
    if checkpoint is None:
        return None
    folder = Path(checkpoint.path)
    if not is_local(checkpoint.filesystem):
        with checkpoint.as_directory() as local:
            return load_checkpoint(Path(local))
    # The job's storage filesystem is the local disk behind a signing layer
    # (jobs/tune_state.py): read the folder in place, as for a plain local checkpoint.
    if folder.exists():
        return load_checkpoint(folder)
    for newer in sorted(folder.parent.glob("checkpoint_*"), reverse=True):
        try:
            return load_checkpoint(newer)
        except (OSError, ValueError, KeyError, SafetensorError):
            continue  # a copy the dying driver left half-written
    raise FileNotFoundError(f"no checkpoint of this trial is left under {folder.parent}")


def train(config: dict[str, Any], *, spec_json: dict[str, Any], data: TrainData) -> None:
    """Train one sampled configuration, report every epoch."""
    job_spec = JobSpec.model_validate(spec_json)
    codec = SpaceCodec(job_spec.search.space)
    spec = effective_spec(job_spec, codec.decode(config))
    if spec.resources.workers_per_trial > 1:
        from jobs.distributed import run_data_parallel

        context = tune.get_context()
        run_data_parallel(
            spec, data, Path(context.get_trial_dir()) / "train", context.get_trial_id()
        )
        return
    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    device = torch.device("cuda" if spec.resources.gpus_per_worker > 0 else "cpu")
    model = init_model(
        spec.model, spec.training, data.example_shape, data.task.n_outputs, data.init_state
    )
    model.to(device)
    resume = _resume_state(tune.get_checkpoint())
    start_epoch = resume.epoch if resume is not None else 0

    trial_id = tune.get_context().get_trial_id()

    def on_epoch(epoch: int, metrics: dict[str, float], last: bool, snapshot: Any) -> None:
        folder = Path(tempfile.mkdtemp(prefix=f"crucible-ckpt-{trial_id}-"))
        try:
            save_checkpoint(folder, snapshot())
            tune.report(
                {
                    **metrics,
                    "epoch": epoch,
                    "last": last,
                    "start_epoch": start_epoch,
                    "pid": os.getpid(),
                },
                checkpoint=tune.Checkpoint.from_directory(str(folder)),
            )
        finally:
            # report copied it into the trial's storage; the local copy would only pile up
            # (one a trial a epoch) on the worker's disk.
            shutil.rmtree(folder, ignore_errors=True)

    fit(
        model,
        data,
        spec.training,
        spec.search.resolved_metric,
        spec.search.resolved_mode,
        on_epoch,
        resume=resume,
        max_epochs=spec.search.max_epochs_per_trial,
        device=device,
    )
