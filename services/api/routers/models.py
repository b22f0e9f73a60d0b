from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.api.deps import CurrentUser, ServicesDep
from services.core.errors import NotFound
from services.core.promotion import endpoint_view, model_view
from services.store.repositories import EndpointRepository, JobRepository, ModelRepository

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(
    services: ServicesDep,
    _: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        jobs = JobRepository(s)
        return {
            "items": [
                model_view(m, _spec(jobs, m.job_id)) for m in ModelRepository(s).list(limit, offset)
            ]
        }


@router.get("/models/{model_id}")
def show_model(model_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    with services.db.session() as s:
        m = ModelRepository(s).get(model_id)
        if m is None:
            raise NotFound(f"no model '{model_id}'")
        return model_view(m, _spec(JobRepository(s), m.job_id))


def _spec(jobs: JobRepository, job_id: str) -> dict[str, Any] | None:
    job = jobs.get(job_id)
    return job.spec if job is not None else None


@router.get("/endpoints")
def list_endpoints(services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    with services.db.session() as s:
        names = [e.name for e in EndpointRepository(s).list()]
    return {"items": [endpoint_view(services.db, services.deployer, n) for n in names]}


@router.get("/endpoints/{name}")
def show_endpoint(name: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    return endpoint_view(services.db, services.deployer, name)
