"""Jobs: validation of a submission, the views the API returns, and applying progress events."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from jobs.bundle import MANIFEST
from jobs.data import read_column
from jobs.events import Event
from jobs.spec import (
    FieldError,
    JobSpec,
    Task,
    check_against_columns,
    check_model_inputs,
    check_spec,
    feature_columns,
    validation_errors,
)
from jobs.tasks import infer_task
from services.core.auth import Principal
from services.core.datasets import get_dataset
from services.core.errors import Conflict, Forbidden, Invalid, NotFound
from services.core.ids import new_id
from services.core.projects import (
    DEFAULT_PROJECT_ID,
    check_job_quotas,
    project_for_new,
    require_visible,
    same_project,
)
from services.core.states import TERMINAL, can_transition, reopen, transition
from services.store.models import Job, JobEvent, Project, Trial, TrialEpoch, utcnow
from services.store.projects import ProjectRepository
from services.store.repositories import (
    EventRepository,
    JobRepository,
    ModelRepository,
    TokenRepository,
    TrialRepository,
)


def pydantic_fields(exc: ValidationError) -> list[dict[str, Any]]:
    return [e.as_dict() for e in validation_errors(exc)]


def validate_spec(session: Session, raw: Any, caller: Principal | None = None) -> JobSpec:
    """Every check a spec must pass before a job exists; raises with each bad field. With a
    caller, the dataset and the parent model must be in one of the caller's projects."""
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise Invalid("the job spec is invalid", pydantic_fields(exc)) from exc
    if caller is not None:
        require_visible(session, caller, "dataset", spec.dataset.id, ["dataset", "id"])
    dataset = get_dataset_or_field_error(session, spec.dataset.id)
    kinds = {c["name"]: c["kind"] for c in dataset.columns}
    shapes = {c["name"]: c.get("shape") for c in dataset.columns}
    errors = check_against_columns(spec, list(kinds))
    target = spec.dataset.target
    if target in kinds and kinds[target] not in ("numeric", "categorical"):
        errors.append(FieldError(("dataset", "target"), f"column '{target}' cannot be a label"))
    elif target in kinds and spec.task == "auto":
        # Settle the task now, so a metric or loss that does not fit it is a 422 here and the
        # stored spec says what will be learnt.
        spec = spec.with_task(inferred_task(dataset.uri, dataset.sha256, target))
    errors += check_spec(spec)
    errors += check_model_inputs(spec, kinds, shapes)
    errors += _check_parent(session, spec, caller)
    for name in feature_columns(spec, list(kinds)):
        if name in kinds and kinds[name] is None:
            errors.append(
                FieldError(
                    ("dataset", "features"),
                    f"column '{name}' has a type no model can read (numbers, text, or arrays "
                    "of numbers); list the usable columns in dataset.features",
                )
            )
    if errors:
        raise Invalid("the job spec is invalid", [e.as_dict() for e in errors])
    return spec


def _check_parent(
    session: Session, spec: JobSpec, caller: Principal | None = None
) -> list[FieldError]:
    model_id = spec.model.init_from
    if model_id is None:
        return []
    loc = ("model", "init_from")
    parent = ModelRepository(session).get(model_id)
    # Another project's model reads as one never made.
    hidden = caller is not None and not caller.sees(ProjectRepository(session).of_model(model_id))
    if parent is None or hidden:
        return [FieldError(loc, f"no model '{model_id}' (see GET /v1/models)")]
    try:
        manifest = json.loads((Path(parent.bundle_uri) / MANIFEST).read_text())
    except (OSError, ValueError):
        return [FieldError(loc, f"the bundle of model '{model_id}' cannot be read")]
    arch = manifest["model"]["architecture"]
    if arch != spec.model.architecture:
        return [
            FieldError(
                loc,
                f"model '{model_id}' is a {arch}; weights only carry over to the same "
                f"architecture, not {spec.model.architecture}",
            )
        ]
    return []


def parent_of(session: Session, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The model a job starts from (transfer learning), as its driver needs to find it."""
    model_id = (spec.get("model") or {}).get("init_from")
    parent = ModelRepository(session).get(model_id) if model_id else None
    if parent is None:
        return None
    return {
        "model_id": parent.id,
        "bundle_uri": parent.bundle_uri,
        "bundle_digest": parent.bundle_digest,
    }


@functools.lru_cache(maxsize=256)
def inferred_task(uri: str, sha256: str, target: str) -> Task:
    """The task a dataset's target implies, read once per dataset content and column, not at
    every submission (reading Adult's target took most of a submission's time)."""
    return infer_task(read_column(uri, target))


def get_dataset_or_field_error(session: Session, dataset_id: str) -> Any:
    try:
        return get_dataset(session, dataset_id)
    except NotFound:
        raise NotFound(
            f"no dataset '{dataset_id}'",
            [{"loc": ["dataset", "id"], "msg": f"no dataset '{dataset_id}'"}],
        ) from None


def project_of_new_job(session: Session, caller: Principal, spec: JobSpec) -> Project:
    """The project a job goes into: the spec's ``project``, else its dataset's, else the
    caller's own; its dataset and parent model must belong to it (or be built-in)."""
    repo = ProjectRepository(session)
    dataset_project = repo.of_dataset(spec.dataset.id) or None
    in_dataset = repo.get(dataset_project) if dataset_project and not spec.project else None
    project = in_dataset or project_for_new(session, caller, spec.project, ["project"])
    same_project(project.id, dataset_project or "", "dataset", spec.dataset.id, ["dataset", "id"])
    if spec.model.init_from is not None:
        parent = repo.of_model(spec.model.init_from) or ""
        if parent != project.id:
            text = f"model '{spec.model.init_from}' is not in project '{project.name}'"
            raise Invalid(text, [{"loc": ["model", "init_from"], "msg": text}])
    return project


def create_job(
    session: Session,
    spec: JobSpec,
    created_by: str | None,
    project_id: str = DEFAULT_PROJECT_ID,
) -> Job:
    """Add a queued job, within its project's quotas (checked under the project's lock, in
    this unit of work)."""
    project = ProjectRepository(session).get(project_id)
    if project is None:
        raise NotFound(f"no project '{project_id}'")
    check_job_quotas(session, project, spec)
    return JobRepository(session).add(
        Job(
            id=new_id("job"),
            name=spec.name,
            status="queued",
            spec=spec.model_dump(mode="json"),
            dataset_id=spec.dataset.id,
            project_id=project.id,
            created_by=created_by,
        )
    )


def check_owner(session: Session, caller: Principal, created_by: str | None, what: str) -> None:
    """A member changes only what they made (cancel, resume); an approver or admin anything
    in their projects. ``created_by`` is the id of the token that made it."""
    if caller.has("approver"):
        return
    token = TokenRepository(session).get(created_by) if created_by else None
    if token is None or token.user_id != caller.user_id:
        raise Forbidden(f"a member may {what} only what they submitted (or ask an approver)")


def get_job(session: Session, job_id: str, for_update: bool = False) -> Job:
    job = JobRepository(session).get(job_id, for_update=for_update)
    if job is None:
        raise NotFound(f"no job '{job_id}'")
    return job


def request_cancel(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id, for_update=True)
    if job.status in TERMINAL:
        raise Conflict(f"job {job_id} has already {job.status}")
    job.cancel_requested = True
    transition(job, "cancelled", error="cancelled by request")
    for trial in TrialRepository(session).running_for_job(job_id):
        trial.status = "cancelled"
        trial.finished_at = utcnow()
    return job


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


# The events that start or end a wait for resources: a wait lasts from a job.waiting until the
# driver says a trial started (job.resumed, trial.started) or a new driver takes over.
_WAIT_MARKERS = ("job.waiting", "job.resumed", "trial.started", "job.running", "job.relaunched")


def waiting_for(job: Job) -> dict[str, Any] | None:
    """What a live job is waiting for (the driver's job.waiting event), or None."""
    session = object_session(job)
    if job.status in TERMINAL or session is None:
        return None
    last = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.type.in_(_WAIT_MARKERS))
        .order_by(JobEvent.id.desc())
        .limit(1)
    ).first()
    return _wait_of(last)


def _wait_of(last: JobEvent | None) -> dict[str, Any] | None:
    if last is None or last.type != "job.waiting":
        return None
    return {"reason": str(last.data.get("reason", "")), "since": last.data.get("since", last.ts)}


def waits_of(session: Session, jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
    """``waiting_for`` of each waiting job among ``jobs``, by id, in one query (a page of the
    job list asked one query per job)."""
    live = [j.id for j in jobs if j.status not in TERMINAL]
    if not live:
        return {}
    latest = (
        select(func.max(JobEvent.id))
        .where(JobEvent.job_id.in_(live), JobEvent.type.in_(_WAIT_MARKERS))
        .group_by(JobEvent.job_id)
    )
    out = {}
    for last in session.scalars(select(JobEvent).where(JobEvent.id.in_(latest))):
        wait = _wait_of(last)
        if wait is not None:
            out[last.job_id] = wait
    return out


def job_view(job: Job, waits: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """With ``waits`` (``waits_of`` the page the job is on), no query of its own."""
    duration = None
    if job.started_at and job.finished_at:
        duration = (job.finished_at - job.started_at).total_seconds()
    wait = waiting_for(job) if waits is None else waits.get(job.id)
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "project_id": job.project_id,
        "dataset_id": job.dataset_id,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "submitted_at": _iso(job.submitted_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "duration_s": duration,
        "best_trial": (
            {"trial_id": job.best_trial_key, "metrics": job.best_metrics}
            if job.best_trial_key
            else None
        ),
        "attempts": job.attempts,
        "resumable": job.resumable,
        # Why no trial runs, while the cluster lacks the resources (None otherwise).
        "waiting_for": wait["reason"] if wait else None,
        "waiting_since": wait["since"] if wait else None,
        "spec": job.spec,
    }


def trials_view(session: Session, job_id: str) -> list[dict[str, Any]]:
    repo = TrialRepository(session)
    trials = repo.for_job(job_id)
    history: dict[int, list[dict[str, Any]]] = {t.id: [] for t in trials}
    for e in repo.epochs([t.id for t in trials]):
        history[e.trial_id].append({"epoch": e.epoch, **e.metrics})
    return [
        {
            "trial_id": t.trial_key,
            "number": t.number,
            "status": t.status,
            "config": t.config,
            "metrics": t.metrics,
            "epochs_completed": t.epochs_completed,
            "restarts": t.restarts,
            "error": t.error,
            "started_at": _iso(t.started_at),
            "finished_at": _iso(t.finished_at),
            "history": history[t.id],
        }
        for t in trials
    ]


# --- progress events ------------------------------------------------------------------------


def _trial(session: Session, job_id: str, key: str) -> Trial:
    repo = TrialRepository(session)
    trial = repo.by_key(job_id, key)
    if trial is None:
        # Events can outrun each other across retries; an epoch may name a trial we have
        # not seen start yet.
        trial = repo.add(Trial(job_id=job_id, trial_key=key, status="running", started_at=utcnow()))
    return trial


def apply_events(session: Session, job_id: str, events: list[Event]) -> int:
    """Store and apply a batch of progress events; return how many were new."""
    job = get_job(session, job_id, for_update=True)
    events_repo = EventRepository(session)
    trials = TrialRepository(session)
    new = 0
    for ev in events:
        stored = events_repo.add_if_new(
            JobEvent(job_id=job_id, key=ev.key, type=ev.type, ts=ev.ts, data=ev.data)
        )
        if not stored:
            continue
        new += 1
        d = ev.data
        if ev.type == "job.running":
            if can_transition(job.status, "running"):
                transition(job, "running")
        elif ev.type == "trial.started":
            trial = _trial(session, job_id, str(d["trial_id"]))
            trial.number = d.get("number")
            trial.config = d.get("config", {})
        elif ev.type == "trial.epoch":
            trial = _trial(session, job_id, str(d["trial_id"]))
            epoch = int(d["epoch"])
            if trials.add_epoch(TrialEpoch(trial_id=trial.id, epoch=epoch, metrics=d["metrics"])):
                trial.epochs_completed = max(trial.epochs_completed, epoch)
                trial.metrics = {**d["metrics"], "epoch": epoch}
                if d.get("config"):  # PBT moves a trial to new hyperparameters as it goes
                    trial.config = d["config"]
        elif ev.type == "trial.finished":
            trial = _trial(session, job_id, str(d["trial_id"]))
            trial.status = "succeeded"
            trial.finished_at = utcnow()
        elif ev.type == "trial.stopped":
            trial = _trial(session, job_id, str(d["trial_id"]))
            trial.status = "stopped"
            trial.finished_at = utcnow()
        elif ev.type == "trial.recovered":
            trial = _trial(session, job_id, str(d["trial_id"]))
            trial.restarts = max(trial.restarts, int(d.get("failures", 1)))
        elif ev.type == "trial.failed":
            trial = _trial(session, job_id, str(d["trial_id"]))
            trial.status = "failed"
            trial.error = d.get("error")
            trial.finished_at = utcnow()
        elif ev.type == "job.succeeded":
            ingest_result(job, d)
        elif ev.type == "job.failed" and can_transition(job.status, "failed"):
            transition(job, "failed", error=str(d.get("error") or "the job failed"))
    return new


def ingest_result(job: Job, result: dict[str, Any]) -> None:
    """Record a finished job's outcome (from its event, or its result file after an outage)."""
    if not can_transition(job.status, "succeeded"):
        return
    if job.status == "queued":
        transition(job, "running")
    best = result["best_trial"]
    job.best_trial_key = best["trial_id"]
    job.best_metrics = best["metrics"]
    job.evaluation = result["evaluation"]
    job.audit = result["audit"]
    job.bundle_uri = result["bundle"]["uri"]
    job.bundle_digest = result["bundle"]["digest"]
    transition(job, "succeeded")


def require_result(job: Job, what: str) -> dict[str, Any]:
    doc = job.evaluation if what == "evaluation" else job.audit
    if doc is None:
        raise Conflict(f"job {job.id} is {job.status}; its {what} exists once it has succeeded")
    return doc


def event_view(e: JobEvent) -> dict[str, Any]:
    return {"id": e.id, "type": e.type, "key": e.key, "ts": e.ts, "data": e.data}


def events_after(session: Session, job_id: str, after_id: int) -> tuple[list[dict[str, Any]], str]:
    """Stored events of a job newer than ``after_id``, and the job's status."""
    job = get_job(session, job_id)
    events = [event_view(e) for e in EventRepository(session).for_job(job_id, after_id)]
    return events, job.status


def relaunch(job: Job, reason: str) -> None:
    """Queue a new driver for a running job whose driver is gone (the reconciler launches it)."""
    job.attempts += 1
    job.submitted_at = None
    session = object_session(job)
    assert session is not None
    session.add(
        JobEvent(
            job_id=job.id,
            key=f"job.relaunched:{job.attempts}",
            type="job.relaunched",
            ts=time.time(),
            data={"attempt": job.attempts, "reason": reason},
        )
    )


def resume_job(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id, for_update=True)
    reopen(job)
    return job


def check_fits(spec: JobSpec, nodes: list[dict[str, float]]) -> None:
    """Refuse a job whose trials can never be placed on the cluster as it is.

    Without this a trial asking for more than any node (or the whole cluster) has sits in
    PENDING forever. A cluster that autoscales skips the check (settings.ray_autoscaling).
    """
    if not nodes:
        return  # the cluster is starting; nothing to compare with yet
    r = spec.resources
    problems: list[dict[str, Any]] = []
    for key, per_worker, field in (
        ("CPU", r.cpus_per_worker, "cpus_per_worker"),
        ("GPU", r.gpus_per_worker, "gpus_per_worker"),
    ):
        if per_worker == 0:
            continue
        per_node = [n.get(key, 0.0) for n in nodes]
        # Workers of one trial may spread over nodes, but each must fit on one.
        slots = sum(int(c // per_worker) for c in per_node)
        if max(per_node) < per_worker or slots < r.workers_per_trial:
            problems.append(
                {
                    "loc": ["resources", field],
                    "msg": f"a trial needs {r.workers_per_trial} worker(s) x {per_worker:g} {key}; "
                    f"the cluster has {len(nodes)} node(s) with {key} "
                    f"{', '.join(f'{c:g}' for c in per_node)} (largest node has "
                    f"{max(per_node):g})",
                }
            )
    if problems:
        raise Invalid("the job can never be scheduled on this cluster", problems)
