"""Serving monitoring: prediction logs posted by an endpoint's replicas, feedback labels, and
the live figures (accuracy, fairness, drift) with the endpoint's alert events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request

from services.api.deps import MAX_ID, CurrentUser, ServicesDep
from services.api.gate import cluster_caller
from services.api.scope import VisibleEndpoint
from services.core.auth import bearer, check_endpoint_token
from services.core.monitoring import FeedbackBatch, Monitor, PredictionBatch

router = APIRouter(prefix="/v1", tags=["monitoring"])


def get_monitor(request: Request) -> Monitor:
    monitor: Monitor = request.app.state.monitor
    return monitor


MonitorDep = Annotated[Monitor, Depends(get_monitor)]


def endpoint_replica(
    name: str,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The caller holds the endpoint's token (only its replicas do). Checked before the body
    is read by services/api/gate.py (FastAPI reads a body before the route's dependencies),
    and again here."""
    check_endpoint_token(services.settings.resolved_secret_key, name, bearer(authorization))
    return name


def _replica_caller(secret: str, params: dict[str, Any], token: str) -> None:
    check_endpoint_token(secret, params["name"], token)


@router.post("/internal/endpoints/{name}/predictions", include_in_schema=False)
@cluster_caller(_replica_caller)
def post_predictions(
    batch: PredictionBatch,
    monitor: MonitorDep,
    name: Annotated[str, Depends(endpoint_replica)],
) -> dict[str, Any]:
    """A replica's sampled prediction logs (at most 10,000 records); a record resent with the
    same (request_id, index) is accepted and not stored twice."""
    return monitor.ingest(name, batch.records)


@router.post("/endpoints/{name}/feedback")
def post_feedback(
    _: CurrentUser, name: VisibleEndpoint, batch: FeedbackBatch, monitor: MonitorDep
) -> dict[str, Any]:
    """Ground-truth labels of logged predictions, by request id and the instance's index in
    that request (0 by default): ``{matched, unmatched}``. A prediction that was not sampled
    for logging (or is unknown) counts as unmatched; a second label replaces the first."""
    return monitor.feedback(name, batch.items)


@router.get("/endpoints/{name}/monitoring")
def get_monitoring(_: CurrentUser, name: VisibleEndpoint, monitor: MonitorDep) -> dict[str, Any]:
    """Live figures over the endpoint's ``monitoring_window`` most recent logged predictions,
    per model version: requests, latency percentiles, prediction distribution, live accuracy
    (with the number of labelled rows), live fairness per sensitive feature, PSI drift per
    feature against the training inputs, and the endpoint's alert."""
    return monitor.figures(name)


@router.get("/endpoints/{name}/events")
def get_endpoint_events(
    _: CurrentUser,
    name: VisibleEndpoint,
    monitor: MonitorDep,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Events with a larger id only.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The endpoint's monitoring events, oldest first: drift alerts raised and cleared."""
    return monitor.events(name, after, limit)
