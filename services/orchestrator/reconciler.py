"""Keeps the database in line with Ray: launches queued jobs and settles finished ones.

It runs as a thread in each API process. Everything it does is idempotent (Ray submission ids
are job ids; results are applied once by state), so a restarted API, or two of them, converge
on the same state without launching a job twice.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import object_session

from jobs.events import UNDELIVERED, Event
from jobs.score import ScoringManifest
from services.config import Settings
from services.core.datasets import read_in_place, verify_unchanged
from services.core.errors import DomainError
from services.core.jobs import apply_events, ingest_result, parent_of, relaunch
from services.core.scoring import get_run, manifest_for, succeed
from services.core.scoring import transition as transition_run
from services.core.states import TERMINAL, can_transition, transition
from services.orchestrator.launcher import job_dir, launch, launch_scoring, submission_id
from services.orchestrator.ray_gateway import RAY_TERMINAL, RayGateway, RayUnreachable
from services.store.db import Database
from services.store.models import Job, utcnow
from services.store.repositories import DatasetRepository, JobRepository, ModelRepository
from services.store.scoring_runs import ScoringRunRepository

log = logging.getLogger(__name__)

# How long a submitted job may be unknown to Ray before we call it lost.
LOST_AFTER = timedelta(seconds=60)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A file the driver wrote, or None when it is missing or unreadable (a driver stopped
    half-way through writing it)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _read_undelivered(path: Path) -> list[Event]:
    """The events a driver could not deliver before it exited (jobs.run), in order."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(Event.model_validate_json(line))
        except ValueError:
            log.warning("%s: skipping an unreadable line", path)
    return events


@dataclass(frozen=True)
class _Snapshot:
    id: str
    submitted: bool
    spec: dict
    dataset: dict
    attempts: int
    parent: dict | None = None  # transfer learning: the model whose weights the job starts from


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        gateway: RayGateway,
        on_succeeded: Callable[[str], object] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.gateway = gateway
        # Called (on its own thread: a deployment takes seconds) for each job that succeeded,
        # whether its result arrived as an event or was read from storage after an outage.
        self.on_succeeded = on_succeeded
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def succeeded(self, job_id: str) -> None:
        # Only a running control loop acts on its own (an app built without one, as in unit
        # tests, leaves it to the caller).
        if self.on_succeeded is not None and self._thread is not None:
            threading.Thread(
                target=self.on_succeeded, args=(job_id,), name=f"succeeded-{job_id}", daemon=True
            ).start()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="crucible-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("reconcile pass failed; retrying")
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        with self.db.session() as s:
            datasets = DatasetRepository(s)
            snapshots = []
            for job in JobRepository(s).active():
                ds = datasets.get(job.dataset_id)
                assert ds is not None  # foreign key
                snapshots.append(
                    _Snapshot(
                        job.id,
                        job.submitted_at is not None,
                        job.spec,
                        {"id": ds.id, "uri": ds.uri, "sha256": ds.sha256},
                        job.attempts,
                        parent_of(s, job.spec),
                    )
                )
        for snap in snapshots:
            if self._stop.is_set():
                return
            try:
                if not snap.submitted:
                    self._launch(snap)
                else:
                    self._settle(snap.id, snap.attempts)
            except RayUnreachable as exc:
                # Every other job would ask the same silent Ray (and a queued one write its
                # manifest again): they all wait for the next pass. With hundreds queued
                # and Ray down, each pass cost an idle API a third of a core.
                log.warning("Ray unreachable, %d job(s) wait: %s", len(snapshots), exc.detail)
                return
            except DomainError as exc:
                log.warning("job %s: %s", snap.id, exc.detail)
            except OSError as exc:
                # The artifact store (full, unmounted): this job waits, the others go on.
                log.warning("job %s: artifact store: %s", snap.id, exc)
        self._scoring_tick()

    def _dataset_problem(self, snap: _Snapshot) -> str | None:
        """Why the job must not start on its dataset: one read in place that no longer hashes
        to what was registered (the manifest pins that sha256, the driver trusts it)."""
        uri, sha256 = snap.dataset["uri"], snap.dataset["sha256"]
        if not read_in_place(uri, self.settings.resolved_artifact_root):
            return None
        problem = verify_unchanged(uri, sha256)
        return None if problem is None else f"dataset {snap.dataset['id']}: {problem}"

    def _launch(self, snap: _Snapshot) -> None:
        problem = self._dataset_problem(snap)
        if problem is not None:
            with self.db.session() as s:
                job = JobRepository(s).get(snap.id, for_update=True)
                if job is not None and can_transition(job.status, "failed"):
                    transition(job, "failed", error=problem)
            return
        launch(
            self.settings,
            self.gateway,
            snap.id,
            snap.spec,
            snap.dataset,
            snap.attempts,
            parent=snap.parent,
        )
        with self.db.session() as s:
            job = JobRepository(s).get(snap.id, for_update=True)
            if job is not None and job.submitted_at is None:
                job.submitted_at = utcnow()
            if job is not None and job.status == "cancelled":
                # Cancelled while we were submitting: stop what we just started.
                self.gateway.stop_job(submission_id(snap.id, snap.attempts))

    def _settle(self, job_id: str, attempts: int) -> None:
        ray_job = self.gateway.get_job(submission_id(job_id, attempts))
        with self.db.session() as s:
            job = JobRepository(s).get(job_id, for_update=True)
            if job is None or job.status in TERMINAL:
                return
            if ray_job is None:
                assert job.submitted_at is not None
                if utcnow() - job.submitted_at > LOST_AFTER:
                    transition(
                        job,
                        "failed",
                        error="Ray has no record of this job (was the cluster restarted?)",
                    )
                return
            if ray_job.status == "RUNNING" and job.status == "queued":
                transition(job, "running")
            elif ray_job.status in RAY_TERMINAL:
                self._finish(job, ray_job.status, ray_job.message)

    def _finish(self, job: Job, ray_status: str, message: str | None) -> None:
        """Ray says the driver is done but its final event never arrived: settle from what
        the driver left in storage (the events it could not deliver, its result), else from
        Ray."""
        folder = job_dir(self.settings, job.id)
        session = object_session(job)
        assert session is not None
        late = _read_undelivered(folder / UNDELIVERED)
        if late:
            apply_events(session, job.id, late)
        # Whatever Ray says: a driver that wrote its result finished its work (it may have
        # exited non-zero only because the API was away when it tried to report).
        result = _read_json(folder / "result.json")
        if result is not None:
            if job.status == "queued":
                # The API went away before it saw the driver start (ingest_result goes on
                # from running only).
                transition(job, "running")
            ingest_result(job, result)
        if job.status == "succeeded":
            self.succeeded(job.id)
            return
        if job.status in TERMINAL:
            return  # the driver's own job.failed said why
        logs = self.gateway.job_logs_tail(submission_id(job.id, job.attempts), 2000)
        reason = {
            "SUCCEEDED": "the driver exited without reporting a result",
            "STOPPED": "the Ray job was stopped outside Crucible",
            "FAILED": f"the Ray job failed: {message or 'no message'}",
        }[ray_status]
        if not can_transition(job.status, "failed"):
            return
        if job.attempts < self.settings.max_driver_restarts:
            # The driver died without saying why (killed, node lost): launch a new one, which
            # restores the Tune experiment from storage. The job stays running.
            relaunch(job, reason)
            self.wake()
            return
        transition(job, "failed", error=f"{reason}\n--- last driver output ---\n{logs}")
        job.resumable = True

    # --- batch scoring --------------------------------------------------------------------
    #
    # A scoring run is one Ray job whose submission id is the run id. Ray's record stands in
    # for a "submitted" flag: a queued run Ray does not know is launched (submitting is
    # idempotent by id), and a run whose Ray job ended without its final report is settled
    # from its result file, or failed with the driver's last output.

    def _scoring_tick(self) -> None:
        root = self.settings.resolved_artifact_root
        with self.db.session() as s:
            models, datasets = ModelRepository(s), DatasetRepository(s)
            active: list[tuple[str, str, ScoringManifest]] = []
            for run in ScoringRunRepository(s).active():
                model, ds = models.get(run.model_id), datasets.get(run.dataset_id)
                assert model is not None and ds is not None  # foreign keys
                active.append((run.id, run.status, manifest_for(root, run, model, ds)))
        for run_id, status, manifest in active:
            if self._stop.is_set():
                return
            try:
                ray_job = self.gateway.get_job(run_id)
                if ray_job is None and status == "queued":
                    self._launch_scoring(manifest)
                elif ray_job is None:
                    self._settle_scoring(
                        run_id,
                        "failed",
                        "Ray has no record of this run (was the cluster restarted?)",
                    )
                elif ray_job.status == "RUNNING" and status == "queued":
                    self._settle_scoring(run_id, "running", None)
                elif ray_job.status in RAY_TERMINAL:
                    self._finish_scoring(manifest, ray_job.status, ray_job.message)
            except DomainError as exc:
                log.warning("scoring run %s: %s", run_id, exc.detail)

    def _settle_scoring(self, run_id: str, new: str, error: str | None) -> None:
        with self.db.session() as s:
            run = get_run(s, run_id, for_update=True)
            if can_transition(run.status, new):
                transition_run(run, new, error=error)

    def _launch_scoring(self, manifest: ScoringManifest) -> None:
        uri, sha256 = manifest.dataset_uri, manifest.dataset_sha256
        if read_in_place(uri, self.settings.resolved_artifact_root):
            problem = verify_unchanged(uri, sha256)
            if problem is not None:
                self._settle_scoring(
                    manifest.run_id, "failed", f"dataset {manifest.dataset_id}: {problem}"
                )
                return
        launch_scoring(self.settings, self.gateway, manifest)
        with self.db.session() as s:
            if get_run(s, manifest.run_id).status == "cancelled":
                # Cancelled while we were submitting: stop what we just started.
                self.gateway.stop_job(manifest.run_id)

    def _finish_scoring(
        self, manifest: ScoringManifest, ray_status: str, message: str | None
    ) -> None:
        """Ray says the driver is done but its final report never arrived."""
        note = manifest.folder / "result.json"
        with self.db.session() as s:
            run = get_run(s, manifest.run_id, for_update=True)
            if run.status in TERMINAL:
                return
            if ray_status == "SUCCEEDED" and note.exists():
                succeed(
                    run,
                    self.settings.resolved_artifact_root,
                    int(json.loads(note.read_text())["rows"]),
                )
                return
            reason = {
                "SUCCEEDED": "the driver exited without reporting a result",
                "STOPPED": "the Ray job was stopped outside Crucible",
                "FAILED": f"the Ray job failed: {message or 'no message'}",
            }[ray_status]
            logs = self.gateway.job_logs_tail(manifest.run_id, 2000)
            transition_run(run, "failed", error=f"{reason}\n--- last driver output ---\n{logs}")
