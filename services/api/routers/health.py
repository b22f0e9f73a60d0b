from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.api.deps import ServicesDep
from services.core.auth import check_metrics_caller

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep, response: Response) -> dict[str, Any]:
    """Ready to take requests: the database answers. Ray's state is reported, not required,
    so jobs can still be queued while the cluster restarts."""
    try:
        with services.db.session() as s:
            s.execute(text("SELECT 1"))
        database = True
    except Exception:
        database = False
    ray = services.gateway.healthy()
    if not database:
        response.status_code = 503
    return {"status": "ok" if database else "unavailable", "database": database, "ray": ray}


@router.get("/metrics", include_in_schema=False)
def metrics(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Prometheus exposition of the API's own metrics (see services/api/metrics.py), for the
    metrics token (CRUCIBLE_METRICS_TOKEN) or an admin's token."""
    scraper = services.settings.metrics_token
    check_metrics_caller(
        services.db, scraper.get_secret_value() if scraper else None, authorization
    )
    data = generate_latest(request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
