"""A page of the job list costs the same few queries whatever its length (each live job's wait
for resources was a query of its own: 50 on a default page), and says what each job's own view
says; a submission reads a dataset's target once, not at every submission
(benchmarks/api_load.py found both)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select

from jobs.events import Event
from services.core import jobs as job_service
from services.store.db import Database
from services.store.models import Job

from .test_store import SPEC, new_job


def send(db: Database, job_id: str, *events: Event) -> None:
    with db.session() as s:
        job_service.apply_events(s, job_id, list(events))


def waiting(since: float) -> Event:
    reason = "waiting for resources: a trial needs 2 CPU; the cluster has 0 of 2 CPU free"
    return Event(
        key=f"job.waiting:{since:.3f}",
        type="job.waiting",
        data={"reason": reason, "since": since},
    )


def page(db: Database, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The views of a page of ``limit`` jobs, as GET /v1/jobs makes them, and its queries."""
    queries = 0

    def count(*_: Any) -> None:
        nonlocal queries
        queries += 1

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.session() as s:
            jobs = s.scalars(select(Job).order_by(Job.id).limit(limit)).all()
            waits = job_service.waits_of(s, jobs)
            return [job_service.job_view(j, waits) for j in jobs], queries
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def test_a_page_of_jobs_costs_a_fixed_number_of_queries_and_agrees_with_each_job(
    db: Database,
) -> None:
    ids = [new_job(db) for _ in range(6)]
    running = Event(key="job.running", type="job.running")
    send(db, ids[0], running, waiting(100.0))  # waiting
    send(db, ids[1], running, waiting(100.0))  # waited, then a trial started
    send(db, ids[1], Event(key="job.resumed:100.000", type="job.resumed", data={"since": 100.0}))
    send(db, ids[2], running, waiting(100.0))  # cancelled while waiting
    with db.session() as s:
        job_service.request_cancel(s, ids[2])
    send(db, ids[3], running, waiting(100.0), waiting(200.0))  # the newest wait counts
    _, few = page(db, 2)
    views, many = page(db, 6)
    assert few == many
    with db.session() as s:
        each = {i: job_service.job_view(job_service.get_job(s, i)) for i in ids}
    assert views == [each[v["id"]] for v in views]
    waits = {v["id"]: (v["waiting_for"], v["waiting_since"]) for v in views}
    assert waits[ids[0]][1] == 100.0 and waits[ids[3]][1] == 200.0
    assert waits[ids[1]] == waits[ids[2]] == waits[ids[4]] == (None, None)


def test_the_task_of_a_dataset_target_is_read_once(db: Database) -> None:
    new_job(db)
    before = job_service.inferred_task.cache_info()
    with db.session() as s:
        for _ in range(3):
            job_service.validate_spec(s, SPEC)
    after = job_service.inferred_task.cache_info()
    assert after.hits - before.hits == 3
    assert after.misses == before.misses
