"""Path parameters that name a resource, checked against the caller's projects.

A route takes ``job_id: VisibleJob`` (and the like) instead of ``job_id: str``: before the
route runs, the id must name a resource in one of the caller's projects, or the answer is the
same 404 as for an id never made. Routes cannot forget the check, and a test walks every
route with an id in its path (tests/services/test_projects.py). Routes declare their role
first (FastAPI resolves dependencies in that order), so a role too low is a 403 whatever the
id, and says nothing about it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from services.api.deps import Authenticated, ServicesDep
from services.core.projects import require_visible


def _check(services: ServicesDep, principal: Authenticated, kind: str, key: str) -> str:
    with services.db.session() as s:
        require_visible(s, principal, kind, key)
    return key


def visible_job(job_id: str, services: ServicesDep, principal: Authenticated) -> str:
    return _check(services, principal, "job", job_id)


def visible_dataset(dataset_id: str, services: ServicesDep, principal: Authenticated) -> str:
    return _check(services, principal, "dataset", dataset_id)


def visible_model(model_id: str, services: ServicesDep, principal: Authenticated) -> str:
    return _check(services, principal, "model", model_id)


def visible_endpoint(name: str, services: ServicesDep, principal: Authenticated) -> str:
    return _check(services, principal, "endpoint", name)


def visible_audit(audit_id: str, services: ServicesDep, principal: Authenticated) -> str:
    return _check(services, principal, "audit", audit_id)


def visible_scoring_run(run_id: str, services: ServicesDep, principal: Authenticated) -> str:
    return _check(services, principal, "scoring run", run_id)


VisibleJob = Annotated[str, Depends(visible_job)]
VisibleDataset = Annotated[str, Depends(visible_dataset)]
VisibleModel = Annotated[str, Depends(visible_model)]
VisibleEndpoint = Annotated[str, Depends(visible_endpoint)]
VisibleAudit = Annotated[str, Depends(visible_audit)]
VisibleScoringRun = Annotated[str, Depends(visible_scoring_run)]
