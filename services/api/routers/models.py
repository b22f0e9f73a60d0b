from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.api.deps import MAX_OFFSET, Approver, CurrentUser, ServicesDep
from services.api.openapi import errors
from services.api.scope import VisibleEndpoint, VisibleModel
from services.core.errors import NotFound
from services.core.promotion import endpoint_view, model_view, rollback
from services.store.repositories import EndpointRepository, JobRepository, ModelRepository

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(
    services: ServicesDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        jobs = JobRepository(s)
        return {
            "items": [
                model_view(m, jobs.get(m.job_id))
                for m in ModelRepository(s).list(limit, offset, user.projects)
            ]
        }


@router.get("/models/{model_id}")
def show_model(_: CurrentUser, model_id: VisibleModel, services: ServicesDep) -> dict[str, Any]:
    """A model version with its lineage: job, trial, spec, dataset sha256, bundle digest, code
    version, metrics, audit verdict and the parent model it started from."""
    with services.db.session() as s:
        m = ModelRepository(s).get(model_id)
        if m is None:
            raise NotFound(f"no model '{model_id}'")
        return model_view(m, JobRepository(s).get(m.job_id))


@router.get("/endpoints")
def list_endpoints(services: ServicesDep, user: CurrentUser) -> dict[str, Any]:
    with services.db.session() as s:
        names = [e.name for e in EndpointRepository(s).list(user.projects)]
    return {"items": [endpoint_view(services.db, services.deployer, n) for n in names]}


@router.get("/endpoints/{name}")
def show_endpoint(_: CurrentUser, name: VisibleEndpoint, services: ServicesDep) -> dict[str, Any]:
    return endpoint_view(services.db, services.deployer, name)


@router.post("/endpoints/{name}/rollback", responses=errors(409, 502))
def rollback_endpoint(
    user: Approver, name: VisibleEndpoint, services: ServicesDep
) -> dict[str, Any]:
    """Serve the version the current one replaced: it starts and must predict on its sample
    rows before traffic moves back (waits until it answers); 409 when there is none."""
    return rollback(services.db, services.deployer, name, actor=user.name)
