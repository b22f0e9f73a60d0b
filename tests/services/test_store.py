"""Repositories and migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from jobs.events import Event
from services.core import jobs as job_service
from services.core.datasets import builtin_id, seed_builtins
from services.core.errors import Conflict
from services.core.states import ALLOWED, transition
from services.store.db import Database, migrate
from services.store.models import Base, Job, JobEvent
from services.store.repositories import EventRepository, JobRepository, TrialRepository

SPEC = {"name": "t", "dataset": {"id": builtin_id("adult"), "target": "income"}}


def new_job(db: Database) -> str:
    with db.session() as s:
        seed_builtins(s)
        spec = job_service.validate_spec(s, SPEC)
        return job_service.create_job(s, spec, None).id


def test_migrations_create_every_table_and_are_idempotent(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    migrate(db.engine)  # a second upgrade is a no-op


def test_builtin_seed_is_idempotent(db: Database) -> None:
    with db.session() as s:
        seed_builtins(s)
    with db.session() as s:
        seed_builtins(s)
    with db.session() as s:
        from jobs.datasets import BUILTIN
        from services.store.repositories import DatasetRepository

        assert DatasetRepository(s).count() == len(BUILTIN)


def test_events_are_stored_once(db: Database) -> None:
    job_id = new_job(db)
    batch = [
        Event(key="job.running", type="job.running"),
        Event(
            key="trial.started:t1",
            type="trial.started",
            data={"trial_id": "t1", "number": 0, "config": {"training.learning_rate": 0.1}},
        ),
        Event(
            key="trial.epoch:t1:1",
            type="trial.epoch",
            data={"trial_id": "t1", "epoch": 1, "metrics": {"val_accuracy": 0.5}},
        ),
    ]
    with db.session() as s:
        assert job_service.apply_events(s, job_id, batch) == 3
    with db.session() as s:  # the same batch again, as after a timed-out POST
        assert job_service.apply_events(s, job_id, batch) == 0
    with db.session() as s:
        stored = [e.type for e in EventRepository(s).for_job(job_id)]
        # the three progress events once each, and the status change they caused
        assert stored == ["job.running", "job.status", "trial.started", "trial.epoch"]
        trials = job_service.trials_view(s, job_id)
        assert len(trials) == 1
        assert trials[0]["history"] == [{"epoch": 1, "val_accuracy": 0.5}]
        assert JobRepository(s).get(job_id).status == "running"  # type: ignore[union-attr]


def test_duplicate_event_insert_does_not_break_the_transaction(db: Database) -> None:
    job_id = new_job(db)
    with db.session() as s:
        repo = EventRepository(s)
        assert repo.add_if_new(JobEvent(job_id=job_id, key="k", type="job.running", ts=0, data={}))
        assert not repo.add_if_new(
            JobEvent(job_id=job_id, key="k", type="job.running", ts=0, data={})
        )
        assert repo.add_if_new(JobEvent(job_id=job_id, key="k2", type="job.running", ts=0, data={}))


def test_epoch_out_of_order_creates_the_trial(db: Database) -> None:
    job_id = new_job(db)
    with db.session() as s:
        job_service.apply_events(
            s,
            job_id,
            [
                Event(
                    key="trial.epoch:t9:2",
                    type="trial.epoch",
                    data={"trial_id": "t9", "epoch": 2, "metrics": {"val_loss": 1.0}},
                )
            ],
        )
    with db.session() as s:
        trial = TrialRepository(s).by_key(job_id, "t9")
        assert trial is not None and trial.epochs_completed == 2


def test_state_machine(db: Database) -> None:
    job_id = new_job(db)
    with db.session() as s:
        job = JobRepository(s).get(job_id)
        assert isinstance(job, Job)
        transition(job, "running")
        transition(job, "succeeded")
        assert job.finished_at is not None
        for target in ALLOWED:
            with pytest.raises(Conflict):
                transition(job, target)


def test_terminal_job_ignores_late_status_events(db: Database) -> None:
    job_id = new_job(db)
    with db.session() as s:
        job_service.request_cancel(s, job_id)
    with db.session() as s:
        job_service.apply_events(
            s,
            job_id,
            [
                Event(key="job.running", type="job.running"),
                Event(key="job.failed", type="job.failed", data={"error": "x"}),
            ],
        )
    with db.session() as s:
        assert JobRepository(s).get(job_id).status == "cancelled"  # type: ignore[union-attr]


def test_a_job_waiting_for_resources_says_so_until_a_trial_starts(db: Database) -> None:
    job_id = new_job(db)
    reason = "waiting for resources: a trial needs 2 CPU; the cluster has 0 of 2 CPU free"

    def view() -> dict[str, object]:
        with db.session() as s:
            return job_service.job_view(job_service.get_job(s, job_id))

    def send(*events: Event) -> None:
        with db.session() as s:
            job_service.apply_events(s, job_id, list(events))

    waiting = Event(
        key="job.waiting:100.000", type="job.waiting", data={"reason": reason, "since": 100.0}
    )
    send(Event(key="job.running", type="job.running"), waiting)
    assert (view()["waiting_for"], view()["waiting_since"]) == (reason, 100.0)
    send(waiting)  # a resent event changes nothing
    assert view()["waiting_for"] == reason
    send(
        Event(key="job.resumed:100.000", type="job.resumed", data={"since": 100.0}),
        Event(key="trial.started:t1", type="trial.started", data={"trial_id": "t1", "number": 0}),
    )
    assert (view()["waiting_for"], view()["waiting_since"]) == (None, None)
    # A second wait; then the driver dies and a new one starts: the old wait is not carried.
    send(
        Event(key="job.waiting:200.000", type="job.waiting", data={"reason": reason, "since": 200})
    )
    assert view()["waiting_for"] == reason
    with db.session() as s:
        job_service.relaunch(job_service.get_job(s, job_id), "driver lost")
    assert view()["waiting_for"] is None
    # A job that ends while waiting (cancelled) is not waiting any more.
    send(
        Event(key="job.waiting:300.000", type="job.waiting", data={"reason": reason, "since": 300})
    )
    with db.session() as s:
        job_service.request_cancel(s, job_id)
    assert view()["waiting_for"] is None


def test_an_event_and_what_it_changes_are_committed_together(db: Database) -> None:
    """An API killed between storing an event and committing its effect must not keep the
    event alone: a resent event would then be skipped as seen and its epoch lost. (On SQLite
    a SAVEPOINT opened outside a transaction is the transaction: releasing it committed the
    event by itself; a CI run lost an epoch that way when the API was killed.)"""
    job_id = new_job(db)
    started = Event(key="trial.started:t1", type="trial.started", data={"trial_id": "t1"})
    epoch = Event(
        key="trial.epoch:t1:1",
        type="trial.epoch",
        data={"trial_id": "t1", "epoch": 1, "metrics": {"val_accuracy": 0.5}},
    )
    with pytest.raises(RuntimeError), db.session() as s:
        job_service.apply_events(s, job_id, [started, epoch])
        raise RuntimeError("the process dies before the commit")
    with db.session() as s:
        assert EventRepository(s).for_job(job_id) == []
    # The driver resends: this time everything lands.
    with db.session() as s:
        assert job_service.apply_events(s, job_id, [started, epoch]) == 2
    with db.session() as s:
        (trial,) = TrialRepository(s).for_job(job_id)
        assert [e.epoch for e in TrialRepository(s).epochs([trial.id])] == [1]
