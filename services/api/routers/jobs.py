from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, status
from pydantic import BaseModel, Field

from services.api.deps import CurrentUser, ServicesDep
from services.core import jobs as job_service
from services.core.errors import DomainError
from services.core.promotion import promote
from services.store.repositories import JobRepository

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post("", status_code=status.HTTP_202_ACCEPTED)
def submit_job(
    services: ServicesDep,
    user: CurrentUser,
    spec: Annotated[dict[str, Any], Body(description="A JobSpec; see GET /v1/spec/schema")],
) -> dict[str, Any]:
    """Validate a job spec and queue the job; it is launched on Ray right after."""
    with services.db.session() as s:
        valid = job_service.validate_spec(s, spec)
        job = job_service.create_job(s, valid, created_by=user.token_id)
        job_id = job.id
    # After the commit: the reconciler launches it (and would, after a crash, on restart).
    services.reconciler.wake()
    return {"id": job_id, "status": "queued"}


@router.get("")
def list_jobs(
    services: ServicesDep,
    _: CurrentUser,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        repo = JobRepository(s)
        items = [job_service.job_view(j) for j in repo.list(status_filter, limit, offset)]
        return {
            "items": items,
            "total": repo.count(status_filter),
            "limit": limit,
            "offset": offset,
        }


@router.get("/{job_id}")
def show_job(job_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    with services.db.session() as s:
        return job_service.job_view(job_service.get_job(s, job_id))


@router.get("/{job_id}/trials")
def job_trials(job_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    with services.db.session() as s:
        job_service.get_job(s, job_id)
        return {"job_id": job_id, "items": job_service.trials_view(s, job_id)}


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    """Stop a queued or running job. Its Ray job is stopped after the status is recorded."""
    with services.db.session() as s:
        job = job_service.request_cancel(s, job_id)
        view = job_service.job_view(job)
        submitted = job.submitted_at is not None
    if submitted:
        # If Ray does not answer now, the reconciler stops the job once it does.
        with contextlib.suppress(DomainError):
            services.gateway.stop_job(job_id)
    return view


@router.get("/{job_id}/evaluation")
def job_evaluation(job_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    """Test-split metrics and confusion matrix of the job's best model."""
    with services.db.session() as s:
        return job_service.require_result(job_service.get_job(s, job_id), "evaluation")


@router.get("/{job_id}/audit")
def job_audit(job_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    """Fairness audit of the best model on the test split."""
    with services.db.session() as s:
        return job_service.require_result(job_service.get_job(s, job_id), "audit")


class PromoteRequest(BaseModel):
    endpoint: str = Field(description="Endpoint name: lower-case letters, digits, '-'.")


@router.post("/{job_id}/promote")
def promote_job(
    job_id: str, body: PromoteRequest, services: ServicesDep, user: CurrentUser
) -> dict[str, Any]:
    """Register the job's best model and serve it at the endpoint (waits until it answers)."""
    return promote(services.db, services.deployer, job_id, body.endpoint, actor=user.name)
