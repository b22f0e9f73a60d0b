from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, status
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from jobs.text import Prose
from services.api.deps import MAX_ID, MAX_OFFSET, Approver, CurrentUser, ServicesDep
from services.api.openapi import errors
from services.api.reports import ReportFormat, respond
from services.api.scope import VisibleJob
from services.core import idempotency, report
from services.core import jobs as job_service
from services.core.errors import DomainError, Invalid
from services.core.promotion import promote
from services.core.states import TERMINAL
from services.orchestrator.launcher import submission_id
from services.store.repositories import JobRepository

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

EVENT_POLL_S = 0.25
HEARTBEAT_S = 15.0

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"description": "Replayed: this Idempotency-Key created the job before."}},
)
def submit_job(
    services: ServicesDep,
    user: CurrentUser,
    response: Response,
    spec: Annotated[dict[str, Any], Body(description="A JobSpec; see GET /v1/spec/schema")],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Retry-safe submission: the same key (per user) and body give back the "
            "same job (200); the same key with another body is a 422. A key lasts "
            "idempotency_key_hours (24 by default); after that it makes a new job.",
        ),
    ] = None,
) -> dict[str, Any]:
    """Validate a job spec and queue the job; it is launched on Ray right after."""
    key, digest = None, ""
    if idempotency_key is not None:
        expired_before = idempotency.cutoff(services.settings.idempotency_key_hours)
        key, digest = idempotency.check_key(idempotency_key), idempotency.body_digest(spec)
        earlier = idempotency.earlier_job(services.db, user.user_id, key, digest, expired_before)
        if earlier is not None:
            return _replayed(services, response, earlier)
    with services.db.session() as s:
        valid = job_service.validate_spec(s, spec, user)
        project_id = job_service.project_of_new_job(s, user, valid).id
    if not services.settings.ray_autoscaling:
        try:
            nodes = services.gateway.node_resources()
        except DomainError:
            nodes = []  # Ray unreachable: accept and queue; the reconciler launches it later
        job_service.check_fits(valid, nodes)
    if key is not None:
        job_id, new = idempotency.create_once(
            services.db,
            user.user_id,
            key,
            digest,
            lambda s: job_service.create_job(s, valid, user.token_id, project_id),
            expired_before,
        )
        if not new:
            return _replayed(services, response, job_id)
    else:
        with services.db.session() as s:
            job = job_service.create_job(s, valid, user.token_id, project_id)
            job_id = job.id
    # After the commit: the reconciler launches it (and would, after a crash, on restart).
    services.reconciler.wake()
    return {"id": job_id, "status": "queued"}


def _replayed(services: ServicesDep, response: Response, job_id: str) -> dict[str, Any]:
    response.status_code = status.HTTP_200_OK
    response.headers["Idempotent-Replayed"] = "true"
    with services.db.session() as s:
        return {"id": job_id, "status": job_service.get_job(s, job_id).status}


@router.get("")
def list_jobs(
    services: ServicesDep,
    user: CurrentUser,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        repo = JobRepository(s)
        jobs = repo.list(status_filter, limit, offset, user.projects)
        waits = job_service.waits_of(s, jobs)
        return {
            "items": [job_service.job_view(j, waits) for j in jobs],
            "total": repo.count(status_filter, user.projects),
            "limit": limit,
            "offset": offset,
        }


@router.get("/{job_id}")
def show_job(_: CurrentUser, job_id: VisibleJob, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as s:
        return job_service.job_view(job_service.get_job(s, job_id))


@router.get("/{job_id}/trials")
def job_trials(_: CurrentUser, job_id: VisibleJob, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as s:
        job_service.get_job(s, job_id)
        return {"job_id": job_id, "items": job_service.trials_view(s, job_id)}


@router.post("/{job_id}/cancel", responses=errors(409))
def cancel_job(user: CurrentUser, job_id: VisibleJob, services: ServicesDep) -> dict[str, Any]:
    """Stop a queued or running job (a member: one they submitted). Its Ray job is stopped
    after the status is recorded."""
    with services.db.session() as s:
        job_service.check_owner(s, user, job_service.get_job(s, job_id).created_by, "cancel")
        job = job_service.request_cancel(s, job_id)
        view = job_service.job_view(job)
        submitted = job.submitted_at is not None
    if submitted:
        # If Ray does not answer now, the reconciler stops the job once it does.
        with contextlib.suppress(DomainError):
            services.gateway.stop_job(submission_id(job_id, view["attempts"]))
    return view


@router.post("/{job_id}/resume", responses=errors(409))
def resume_job(user: CurrentUser, job_id: VisibleJob, services: ServicesDep) -> dict[str, Any]:
    """Relaunch a job whose driver was lost; the search continues from its stored state."""
    with services.db.session() as s:
        job_service.check_owner(s, user, job_service.get_job(s, job_id).created_by, "resume")
        view = job_service.job_view(job_service.resume_job(s, job_id))
    services.reconciler.wake()
    return view


@router.get("/{job_id}/logs", responses=errors(502))
def job_logs(
    _: CurrentUser,
    job_id: VisibleJob,
    services: ServicesDep,
    tail: Annotated[int, Query(ge=1, le=1_000_000, description="Last characters")] = 20_000,
) -> dict[str, Any]:
    """The end of the job driver's output (its latest attempt), as Ray's Jobs API keeps it."""
    with services.db.session() as s:
        job = job_service.get_job(s, job_id)
        submitted, attempt = job.submitted_at is not None, job.attempts
    if not submitted:
        return {"job_id": job_id, "attempt": attempt, "logs": "", "note": "not submitted yet"}
    logs = services.gateway.job_logs_tail(submission_id(job_id, attempt), tail)
    return {"job_id": job_id, "attempt": attempt, "logs": logs}


@router.get("/{job_id}/evaluation", responses=errors(409))
def job_evaluation(_: CurrentUser, job_id: VisibleJob, services: ServicesDep) -> dict[str, Any]:
    """Test-split metrics and confusion matrix of the job's best model; with
    promotion.compress or .prune, ``compression`` compares the compressed variant with it
    (size, latency, metrics, audit) and holds the variant's own evaluation and audit."""
    with services.db.session() as s:
        return job_service.require_result(job_service.get_job(s, job_id), "evaluation")


@router.get("/{job_id}/audit", responses=errors(409))
def job_audit(_: CurrentUser, job_id: VisibleJob, services: ServicesDep) -> dict[str, Any]:
    """Fairness audit of the best model on the test split."""
    with services.db.session() as s:
        return job_service.require_result(job_service.get_job(s, job_id), "audit")


@router.get("/{job_id}/audit.html", response_class=HTMLResponse, responses=errors(409))
def job_audit_report(
    _: CurrentUser, job_id: VisibleJob, services: ServicesDep, fmt: ReportFormat = "html"
) -> Response:
    """The audit as a self-contained HTML report (plots, summary, model card); ?format=pdf."""
    with services.db.session() as s:
        job = job_service.get_job(s, job_id)
        doc = job_service.require_result(job, "audit")
        report.require_report_version(doc, f"job {job_id}")
        page = report.render(doc, report.job_card(s, job))
    return respond(page, fmt, f"audit-{job_id}")


@router.get("/{job_id}/events", response_class=StreamingResponse)
async def job_events(
    _: CurrentUser,
    job_id: VisibleJob,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="Resume after this event id")
    ] = None,
) -> StreamingResponse:
    """Server-sent events: the job's stored history, then live progress until it ends.

    Each event's ``id`` is its sequence number; a client that reconnects with
    ``Last-Event-ID`` (or ``?after=``) gets only what it missed.
    """
    start = after if after is not None else _parse_event_id(last_event_id)

    def read(cursor: int) -> tuple[list[dict[str, Any]], str]:
        with services.db.session() as s:
            return job_service.events_after(s, job_id, cursor)

    first, _status = await asyncio.to_thread(read, start)  # 404 before the stream opens

    async def stream() -> AsyncIterator[str]:
        cursor, batch = start, first
        idle = 0.0
        while True:
            for ev in batch:
                cursor = ev["id"]
                yield f"id: {ev['id']}\nevent: {ev['type']}\ndata: {json.dumps(ev)}\n\n"
            batch, status = await asyncio.to_thread(read, cursor)
            if not batch and status in TERMINAL:
                yield "event: end\ndata: {}\n\n"
                return
            if batch:
                idle = 0.0
                continue
            await asyncio.sleep(EVENT_POLL_S)
            idle += EVENT_POLL_S
            if idle >= HEARTBEAT_S:  # keeps proxies from closing a quiet stream
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _parse_event_id(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return min(max(0, int(value)), MAX_ID)
    except ValueError:
        raise Invalid(
            "Last-Event-ID must be an event id",
            [{"loc": ["header", "Last-Event-ID"], "msg": "not an integer"}],
        ) from None


class TrafficShare(BaseModel):
    model_config = ConfigDict(strict=True)

    new: int = Field(
        100,
        ge=1,
        le=100,
        description="Percent of the endpoint's requests the promoted model gets; below 100 a "
        "canary beside the version serving now (promote again with 100, or roll back, to end "
        "it).",
    )


class PromoteRequest(BaseModel):
    # Strict: a JSON true is not the number 1, nor the string "yes" an override.
    model_config = ConfigDict(strict=True)

    endpoint: str = Field(description="Endpoint name: lower-case letters, digits, '-'.")
    override: bool = Field(
        False,
        description="Promote even if the spec's promotion gates fail; needs a written reason, "
        "stored with the gate results in the endpoint's history.",
    )
    reason: Prose | None = Field(
        None, max_length=2000, description="Why the gates are overridden (with override)."
    )
    candidate: Literal["best", "mitigated", "compressed"] | None = Field(
        None,
        description="best: the search's best model; mitigated: its fairness-mitigated variant "
        "(audit.mitigation), whose prediction requests must carry the mitigation's sensitive "
        "feature; compressed: its pruned and/or int8 variant (promotion.compress, "
        "promotion.prune). Default: compressed when the spec asked for compression, else best.",
    )
    traffic: TrafficShare = Field(
        default_factory=lambda: TrafficShare(),
        description="{new: percent}: below 100 a canary splits requests with the version "
        "serving now.",
    )
    serving: dict[str, Any] | None = Field(
        None,
        description="Overrides of the spec's promotion.serving for this endpoint (replicas, "
        "queue limit, batching, monitoring).",
    )


@router.post("/{job_id}/promote", responses=errors(409, 502))
def promote_job(
    user: Approver, job_id: VisibleJob, body: PromoteRequest, services: ServicesDep
) -> dict[str, Any]:
    """Register the job's best model, check the spec's promotion gates (409 listing each failed
    check with its numbers, unless overridden with a reason), and serve it at the endpoint: the
    new version starts beside the old one and must predict on its sample rows before traffic
    moves (waits until it answers)."""
    reason = (body.reason or "").strip()
    if body.override and not reason:
        raise Invalid(
            "an override needs a written reason",
            [{"loc": ["reason"], "msg": "say why the gates are overridden"}],
        )
    return promote(
        services.db,
        services.deployer,
        job_id,
        body.endpoint,
        actor=user.name,
        reason=reason if body.override else None,
        candidate=body.candidate,
        traffic=body.traffic.new,
        serving=body.serving,
    )
