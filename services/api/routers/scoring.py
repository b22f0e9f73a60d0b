"""Batch scoring: a model's predictions for every row of a registered dataset, as a Ray job."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from services.api.deps import MAX_OFFSET, CurrentUser, ServicesDep
from services.api.openapi import errors
from services.api.scope import VisibleEndpoint, VisibleModel, VisibleScoringRun
from services.core import scoring
from services.core.auth import Principal
from services.core.errors import DomainError
from services.core.jobs import check_owner
from services.core.projects import require_visible, same_project
from services.store.models import ModelVersion
from services.store.projects import ProjectRepository
from services.store.scoring_runs import ScoringRunRepository

router = APIRouter(prefix="/v1", tags=["scoring"])

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
PARQUET = "application/vnd.apache.parquet"


def _submit(
    services: ServicesDep,
    user: Principal,
    find_model: Callable[[Session], ModelVersion],
    endpoint: str | None,
    req: scoring.ScoringRequest,
) -> dict[str, Any]:
    created_by = user.token_id
    with services.db.session() as s:
        model = find_model(s)
        model_id = model.id
        # The rows scored, and the predictions, stay in the model's project.
        in_project = require_visible(s, user, "dataset", req.dataset_id, ["dataset_id"])
        owner = ProjectRepository(s).of_model(model_id) or ""
        same_project(owner, in_project, "dataset", req.dataset_id, ["dataset_id"])
        dataset = scoring.dataset_or_field_error(s, req.dataset_id)
        scoring.check_request(model, dataset, req)
    if not services.settings.ray_autoscaling:
        try:
            nodes = services.gateway.node_resources()
        except DomainError:
            nodes = []  # Ray unreachable: accept and queue; the reconciler launches it later
        scoring.check_concurrency(req, nodes)
    with services.db.session() as s:
        run = scoring.create_run(
            s,
            # By id: the version checked above, even if the endpoint moved on meanwhile.
            scoring.get_model(s, model_id),
            scoring.dataset_or_field_error(s, req.dataset_id),
            req,
            endpoint,
            created_by,
        )
        run_id = run.id
    # After the commit: the reconciler launches it (and would, after a crash, on restart).
    services.reconciler.wake()
    return {"id": run_id, "status": "queued"}


@router.post("/endpoints/{name}/batch", status_code=status.HTTP_202_ACCEPTED, responses=errors(409))
def score_with_endpoint(
    user: CurrentUser, name: VisibleEndpoint, req: scoring.ScoringRequest, services: ServicesDep
) -> dict[str, Any]:
    """Score every row of a dataset with the model the endpoint serves now, on Ray Data, as
    the endpoint would answer each row. 202 ``{id, status: "queued"}``; follow it at
    ``GET /v1/scoring/{id}``."""
    return _submit(services, user, lambda s: scoring.endpoint_model(s, name), name, req)


@router.post(
    "/models/{model_id}/score", status_code=status.HTTP_202_ACCEPTED, responses=errors(409)
)
def score_with_model(
    user: CurrentUser, model_id: VisibleModel, req: scoring.ScoringRequest, services: ServicesDep
) -> dict[str, Any]:
    """Score every row of a dataset with a model version, served or not."""
    return _submit(services, user, lambda s: scoring.get_model(s, model_id), None, req)


@router.get("/scoring")
def list_runs(
    services: ServicesDep,
    user: CurrentUser,
    status_filter: Annotated[Status | None, Query(alias="status")] = None,
    model_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        repo = ScoringRunRepository(s)
        return {
            "items": [
                scoring.run_view(r)
                for r in repo.list(status_filter, model_id, limit, offset, user.projects)
            ],
            "total": repo.count(status_filter, model_id, user.projects),
            "limit": limit,
            "offset": offset,
        }


@router.get("/scoring/{run_id}")
def show_run(_: CurrentUser, run_id: VisibleScoringRun, services: ServicesDep) -> dict[str, Any]:
    """Status, progress (rows done of rows total), where the result is, and any error."""
    with services.db.session() as s:
        return scoring.run_view(scoring.get_run(s, run_id))


@router.post("/scoring/{run_id}/cancel", responses=errors(409))
def cancel_run(
    user: CurrentUser, run_id: VisibleScoringRun, services: ServicesDep
) -> dict[str, Any]:
    """Stop a queued or running run (a member: one they asked for)."""
    with services.db.session() as s:
        check_owner(s, user, scoring.get_run(s, run_id).created_by, "cancel")
        view = scoring.run_view(scoring.request_cancel(s, run_id))
    # If Ray does not answer now, the driver's later reports are ignored (the run is settled).
    with contextlib.suppress(DomainError):
        services.gateway.stop_job(run_id)
    return view


def _json_safe(value: Any) -> Any:
    """NaN and infinities have no JSON form: null, like a missing value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@router.get("/scoring/{run_id}/result", response_model=None, responses=errors(409))
def run_result(
    _: CurrentUser,
    run_id: VisibleScoringRun,
    services: ServicesDep,
    format: Annotated[Literal["parquet", "json"], Query()] = "parquet",
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> FileResponse | dict[str, Any]:
    """The result of a run that succeeded: the Parquet file (``row``, the carried columns,
    ``prediction``, and ``probabilities`` or ``anomaly_score`` where the task has them), or
    with ``?format=json`` one page of its rows. 409 until the run has succeeded."""
    root = services.settings.resolved_artifact_root
    with services.db.session() as s:
        path = scoring.finished_result(s, run_id, root)
    if format == "parquet":
        return FileResponse(path, media_type=PARQUET, filename=f"{run_id}.parquet")
    rows, total = scoring.result_rows(path, offset, limit)
    return {
        "items": jsonable_encoder(_json_safe(rows)),
        "total": total,
        "limit": limit,
        "offset": offset,
    }
