"""Launching a queued job on Ray: its manifest in artifact storage, then one Ray job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jobs.score import ScoringManifest
from services.config import Settings
from services.core.auth import job_token
from services.core.scoring import scoring_token
from services.orchestrator.ray_gateway import RayGateway, RayJob

# The only command the cluster is ever asked to run; the job id is ours, never user text.
ENTRYPOINT = ("python", "-m", "jobs.run")


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.resolved_artifact_root / "jobs" / job_id


def write_manifest(
    settings: Settings,
    job_id: str,
    spec: dict[str, Any],
    dataset: dict[str, Any],
    parent: dict[str, Any] | None = None,
) -> Path:
    folder = job_dir(settings, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    tmp = path.with_suffix(".tmp")
    doc = {"job_id": job_id, "spec": spec, "dataset": dataset, "parent": parent}
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)  # a driver never reads a half-written manifest
    return path


def submission_id(job_id: str, attempt: int) -> str:
    return job_id if attempt == 0 else f"{job_id}-r{attempt}"


def launch(
    settings: Settings,
    gateway: RayGateway,
    job_id: str,
    spec: dict[str, Any],
    dataset: dict[str, Any],
    attempt: int = 0,
    parent: dict[str, Any] | None = None,
) -> RayJob:
    write_manifest(settings, job_id, spec, dataset, parent)
    env = {
        "CRUCIBLE_ARTIFACT_ROOT": str(settings.resolved_artifact_root),
        "CRUCIBLE_API_URL": settings.resolved_api_url,
        "CRUCIBLE_JOB_TOKEN": job_token(settings.resolved_secret_key, job_id),
        "PYTHONUNBUFFERED": "1",
        # Tune warns when it snapshots often; small trials on a laptop do exactly that.
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    }
    return gateway.submit_job(
        submission_id(job_id, attempt),
        [*ENTRYPOINT, job_id],
        env,
        metadata={"crucible_job_id": job_id, "attempt": str(attempt)},
    )


# Batch scoring: the same door, its own fixed command; the run id is ours, never user text.
SCORING_ENTRYPOINT = ("python", "-m", "jobs.score")


def launch_scoring(settings: Settings, gateway: RayGateway, manifest: ScoringManifest) -> RayJob:
    """Write the run's manifest and submit its driver; the submission id is the run id, so a
    retried launch finds the first one."""
    manifest.write()
    env = {
        "CRUCIBLE_ARTIFACT_ROOT": str(settings.resolved_artifact_root),
        "CRUCIBLE_API_URL": settings.resolved_api_url,
        "CRUCIBLE_JOB_TOKEN": scoring_token(settings.resolved_secret_key, manifest.run_id),
        "PYTHONUNBUFFERED": "1",
    }
    return gateway.submit_job(
        manifest.run_id,
        [*SCORING_ENTRYPOINT, manifest.run_id],
        env,
        metadata={"crucible_scoring_run_id": manifest.run_id},
    )
