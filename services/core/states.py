"""The job state machine, enforced here and nowhere else."""

from __future__ import annotations

import time

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
    # Each status is reached at most once, so its key makes the event unique, and live
    # followers (GET /v1/jobs/{id}/events) see status changes in the same stream as progress.
    session = object_session(job)
    if session is not None:
        session.add(
            JobEvent(
                job_id=job.id,
                key=f"job.status:{new}",
                type="job.status",
                ts=time.time(),
                data={"status": new, "error": job.error},
            )
        )
