from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status
from fastapi.responses import HTMLResponse, Response

from services.api.deps import MAX_OFFSET, CurrentUser, ServicesDep
from services.api.openapi import errors
from services.api.reports import ReportFormat, respond
from services.api.scope import VisibleAudit
from services.core import audits as audit_service
from services.core import report
from services.store.repositories import AuditRepository

router = APIRouter(prefix="/v1/audits", tags=["audits"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_audit(
    services: ServicesDep,
    user: CurrentUser,
    body: Annotated[
        dict[str, Any],
        Body(
            description="An AuditRequest: dataset_id, label_column, prediction_column, "
            "optional score_column, sensitive_features, and the audit options of a job spec "
            "(thresholds, gate, bootstrap, min_group_count, small_groups, intersections)"
        ),
    ],
) -> dict[str, Any]:
    """Audit predictions made elsewhere; the document is the one a job's audit has.

    Bad input (a missing column, predictions that are not binary or have gaps, a sensitive
    feature with one group or no values) is a 422 naming the field; nothing is stored then.
    """
    with services.db.session() as s:
        return audit_service.audit_predictions(s, body, user.token_id, user)


@router.get("")
def list_audits(
    services: ServicesDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        repo = AuditRepository(s)
        return {
            "items": [
                audit_service.audit_summary(a) for a in repo.list(limit, offset, user.projects)
            ],
            "total": repo.count(user.projects),
            "limit": limit,
            "offset": offset,
        }


# Declared before /{audit_id}, which would otherwise take "aud_x.html" as an id.
@router.get("/{audit_id}.html", response_class=HTMLResponse, responses=errors(409))
def audit_report(
    _: CurrentUser, audit_id: VisibleAudit, services: ServicesDep, fmt: ReportFormat = "html"
) -> Response:
    """The audit as a self-contained HTML report (plots, summary, model card); ?format=pdf."""
    with services.db.session() as s:
        audit = audit_service.get_audit(s, audit_id)
        page = report.render(audit.document, report.predictions_card(s, audit))
    return respond(page, fmt, f"audit-{audit_id}")


@router.get("/{audit_id}")
def show_audit(_: CurrentUser, audit_id: VisibleAudit, services: ServicesDep) -> dict[str, Any]:
    with services.db.session() as s:
        return audit_service.audit_view(audit_service.get_audit(s, audit_id))
