"""The job state machine, enforced here and nowhere else."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import object_session

from services.core.errors import Conflict
from services.store.models import Job, JobEvent, utcnow

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ALLOWED: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def can_transition(current: str, new: str) -> bool:
    return new in ALLOWED[current]


def transition(job: Job, new: str, error: str | None = None) -> None:
    """Move a job to ``new``; raise Conflict when that move is not allowed."""
    if not can_transition(job.status, new):
        raise Conflict(f"job {job.id} is {job.status}; it cannot become {new}")
    job.status = new
    now = utcnow()
    if new == "running":
        job.started_at = job.started_at or now
    if new in TERMINAL:
        job.finished_at = now
    if error is not None:
        job.error = error
    # Each status is reached at most once per launch, so its key makes the event unique, and
    # live followers (GET /v1/jobs/{id}/events) see status changes beside progress.
    _record(
        job, f"job.status:{new}:{job.attempts}", "job.status", {"status": new, "error": job.error}
    )


def _record(job: Job, key: str, kind: str, data: dict[str, Any]) -> None:
    session = object_session(job)
    if session is not None:
        session.add(JobEvent(job_id=job.id, key=key, type=kind, ts=time.time(), data=data))


def reopen(job: Job) -> None:
    """The one way out of a final status: resuming a job whose driver was lost.

    The Tune experiment it left in storage is restored by the next driver, so finished trials
    are kept; only ``resume`` calls this, and only for jobs marked resumable.
    """
    if job.status != "failed" or not job.resumable:
        raise Conflict(
            f"job {job.id} is {job.status}; only a job whose driver was lost can be resumed"
        )
    job.status, job.error, job.finished_at, job.resumable = "running", None, None, False
    job.attempts += 1
    job.submitted_at = None
    _record(
        job,
        f"job.status:running:{job.attempts}",
        "job.status",
        {"status": "running", "error": None, "resumed": True},
    )
