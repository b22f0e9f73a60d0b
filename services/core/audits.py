"""Audits of predictions users bring: a registered dataset with label and prediction columns.

Reviewers use these for models trained elsewhere. The document is the one a job's audit has
(:func:`jobs.audit.run_audit`); it is computed completely before anything is stored, so a
request that fails leaves no row behind.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, ValidationError
from sqlalchemy.orm import Session

from jobs.audit import AuditInputError, binary_outcomes, run_audit
from jobs.datasets import resolve_uri
from jobs.spec import NAME_PATTERN, AuditOptions
from services.core.auth import Principal
from services.core.datasets import get_dataset
from services.core.errors import Invalid, NotFound
from services.core.ids import new_id
from services.core.jobs import pydantic_fields
from services.core.projects import DEFAULT_PROJECT_ID, project_for_new, require_visible
from services.store.models import Audit, Dataset
from services.store.repositories import AuditRepository


class AuditRequest(AuditOptions):
    """POST /v1/audits: which columns hold what, and how the audit judges them."""

    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="A short name to find the audit by."
    )
    dataset_id: str = Field(description="A registered dataset (see POST /v1/datasets).")
    label_column: str = Field(min_length=1, description="Column with the true outcome.")
    prediction_column: str = Field(
        min_length=1, description="Column with the model's predicted class (binary)."
    )
    score_column: str | None = Field(
        None,
        description="Optional column with the model's score for the favourable class; its "
        "mean per group is reported.",
    )
    sensitive_features: list[str] = Field(
        min_length=1, description="Columns whose groups are compared."
    )


# Which request field an input of jobs.audit corresponds to.
_FIELD_OF_INPUT = {
    "y_true": "label_column",
    "y_pred": "prediction_column",
    "scores": "score_column",
    "positive_label": "positive_label",
    "intersections": "intersections",
}


def _loc(req: AuditRequest, input: str) -> list[str | int]:
    if input.startswith("sensitive:"):
        name = input.removeprefix("sensitive:")
        return ["sensitive_features", req.sensitive_features.index(name)]
    return [_FIELD_OF_INPUT.get(input, input)]


def _invalid(req: AuditRequest, exc: AuditInputError) -> Invalid:
    loc = _loc(req, exc.input)
    column = {
        "label_column": req.label_column,
        "prediction_column": req.prediction_column,
        "score_column": req.score_column,
    }.get(str(loc[0]))
    msg = f"column '{column}' {exc}" if column else str(exc)
    return Invalid(f"the predictions cannot be audited: {msg}", [{"loc": loc, "msg": msg}])


def validate_request(raw: Any) -> AuditRequest:
    try:
        return AuditRequest.model_validate(raw)
    except ValidationError as exc:
        raise Invalid("the audit request is invalid", pydantic_fields(exc)) from exc


def _check_columns(req: AuditRequest, dataset: Dataset) -> None:
    names = [c["name"] for c in dataset.columns]
    known = set(names)
    errors: list[dict[str, Any]] = []
    roles: list[tuple[list[str | int], str]] = [
        (["label_column"], req.label_column),
        (["prediction_column"], req.prediction_column),
    ]
    if req.score_column is not None:
        roles.append((["score_column"], req.score_column))
    roles += [(["sensitive_features", i], n) for i, n in enumerate(req.sensitive_features)]
    for loc, column in roles:
        if column not in known:
            errors.append({"loc": loc, "msg": f"column '{column}' is not in the dataset: {names}"})
    outcome_columns = {req.label_column, req.prediction_column, req.score_column}
    for i, column in enumerate(req.sensitive_features):
        if column in outcome_columns:
            errors.append(
                {
                    "loc": ["sensitive_features", i],
                    "msg": f"column '{column}' is the label, prediction or score column",
                }
            )
    if len(set(req.sensitive_features)) != len(req.sensitive_features):
        errors.append({"loc": ["sensitive_features"], "msg": "names a column twice"})
    if errors:
        raise Invalid("the audit request does not fit the dataset", errors)


def _column(table: pa.Table, name: str) -> np.ndarray:
    """One column as numpy: numbers as numbers (NaN for missing), anything else as objects."""
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    kind = col.type
    if (pa.types.is_integer(kind) or pa.types.is_boolean(kind)) and col.null_count == 0:
        return col.to_numpy()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return col.cast(pa.float64()).to_numpy()
    return np.asarray(col.to_pylist(), dtype=object)


def audit_predictions(
    session: Session, raw: Any, created_by: str | None, caller: Principal | None = None
) -> dict[str, Any]:
    """Validate, audit and store; returns the stored audit's view. The audit belongs to its
    dataset's project (for a built-in dataset, the caller's own)."""
    req = validate_request(raw)
    project_id = DEFAULT_PROJECT_ID
    if caller is not None:
        in_project = require_visible(session, caller, "dataset", req.dataset_id, ["dataset_id"])
        project_id = in_project or project_for_new(session, caller, None, ["dataset_id"]).id
    try:
        dataset = get_dataset(session, req.dataset_id)
    except NotFound:
        msg = f"no dataset '{req.dataset_id}'"
        raise NotFound(msg, [{"loc": ["dataset_id"], "msg": msg}]) from None
    _check_columns(req, dataset)
    columns = [req.label_column, req.prediction_column, *req.sensitive_features]
    if req.score_column is not None:
        columns.append(req.score_column)
    table = pq.read_table(resolve_uri(dataset.uri), columns=list(dict.fromkeys(columns)))
    try:
        y_true, y_pred, positive = binary_outcomes(
            _column(table, req.label_column),
            _column(table, req.prediction_column),
            req.positive_label,
        )
        scores = None
        if req.score_column is not None:
            scores = _column(table, req.score_column)
            if scores.dtype.kind not in "biuf":
                raise AuditInputError("scores", "must hold numbers")
            if not np.isfinite(scores.astype(np.float64)).all():
                raise AuditInputError("scores", "has missing or infinite values")
        document = run_audit(
            y_true,
            y_pred,
            {n: _column(table, n) for n in req.sensitive_features},
            req,
            positive_label=positive,
            scores=scores,
        )
    except AuditInputError as exc:
        raise _invalid(req, exc) from exc
    audit = AuditRepository(session).add(
        Audit(
            id=new_id("aud"),
            name=req.name,
            dataset_id=dataset.id,
            dataset_sha256=dataset.sha256,
            request=req.model_dump(mode="json"),
            document=document,
            passed=bool(document["passed"]),
            num_rows=int(document["num_rows"]),
            created_by=created_by,
            project_id=project_id,
        )
    )
    return audit_view(audit)


def _iso(t: datetime) -> str:
    return t.isoformat()


def audit_view(a: Audit) -> dict[str, Any]:
    """The audit document, with where it came from."""
    return {
        "id": a.id,
        "name": a.name,
        "created_at": _iso(a.created_at),
        "source": {
            "kind": "predictions",
            "dataset_id": a.dataset_id,
            "dataset_sha256": a.dataset_sha256,
            "label_column": a.request["label_column"],
            "prediction_column": a.request["prediction_column"],
            "score_column": a.request.get("score_column"),
        },
        **a.document,
    }


def audit_summary(a: Audit) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "dataset_id": a.dataset_id,
        "project_id": a.project_id,
        "passed": a.passed,
        "num_rows": a.num_rows,
        "created_at": _iso(a.created_at),
    }


def get_audit(session: Session, audit_id: str) -> Audit:
    audit = AuditRepository(session).get(audit_id)
    if audit is None:
        raise NotFound(f"no audit '{audit_id}'")
    return audit
