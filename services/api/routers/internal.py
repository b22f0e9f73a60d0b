"""Routes the cluster calls: a running job reports its progress here with its job token, a
scoring run's driver with the run's token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header

from jobs.events import EventBatch, ScoringReport
from services.api.deps import ServicesDep
from services.api.gate import cluster_caller
from services.core.auth import bearer, check_job_token
from services.core.jobs import apply_events
from services.core.scoring import apply_report, check_scoring_token

router = APIRouter(prefix="/v1/internal", tags=["internal"], include_in_schema=False)


def _job_caller(secret: str, params: dict[str, Any], token: str) -> None:
    check_job_token(secret, params["job_id"], token)


def _scoring_caller(secret: str, params: dict[str, Any], token: str) -> None:
    check_scoring_token(secret, params["run_id"], token)


@router.post("/jobs/{job_id}/events")
@cluster_caller(_job_caller)
def post_events(
    job_id: str,
    batch: EventBatch,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    check_job_token(services.settings.resolved_secret_key, job_id, bearer(authorization))
    with services.db.session() as s:
        new = apply_events(s, job_id, batch.events)
    if new and any(e.type == "job.succeeded" for e in batch.events):
        services.reconciler.succeeded(job_id)  # e.g. promotion.auto
    return {"accepted": len(batch.events), "new": new}


@router.post("/scoring/{run_id}/report")
@cluster_caller(_scoring_caller)
def post_scoring_report(
    run_id: str,
    report: ScoringReport,
    services: ServicesDep,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    check_scoring_token(services.settings.resolved_secret_key, run_id, bearer(authorization))
    with services.db.session() as s:
        applied = apply_report(s, run_id, report, services.settings.resolved_artifact_root)
    return {"applied": applied}
