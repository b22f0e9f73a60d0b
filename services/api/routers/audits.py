from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, status
from fastapi.responses import HTMLResponse, Response

from services.api.deps import CurrentUser, ServicesDep
from services.api.reports import ReportFormat, respond
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
        return audit_service.audit_predictions(s, body, created_by=user.token_id)


@router.get("")
def list_audits(
    services: ServicesDep,
    _: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        repo = AuditRepository(s)
        return {
            "items": [audit_service.audit_summary(a) for a in repo.list(limit, offset)],
            "total": repo.count(),
            "limit": limit,
            "offset": offset,
        }


# Declared before /{audit_id}, which would otherwise take "aud_x.html" as an id.
@router.get("/{audit_id}.html", response_class=HTMLResponse)
def audit_report(
    audit_id: str, services: ServicesDep, _: CurrentUser, fmt: ReportFormat = "html"
) -> Response:
    """The audit as a self-contained HTML report (plots, summary, model card); ?format=pdf."""
    with services.db.session() as s:
        audit = audit_service.get_audit(s, audit_id)
        page = report.render(audit.document, report.predictions_card(s, audit))
    return respond(page, fmt, f"audit-{audit_id}")


@router.get("/{audit_id}")
def show_audit(audit_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    with services.db.session() as s:
        return audit_service.audit_view(audit_service.get_audit(s, audit_id))
