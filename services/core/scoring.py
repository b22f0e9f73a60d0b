"""Batch scoring runs: a model version's predictions for every row of a registered dataset.

A request is checked in full before anything exists: the model (or the endpoint's live model),
the dataset, and each input the model's bundle declares against the dataset's columns. The run
is then queued; the reconciler launches ``python -m jobs.score <id>`` on Ray, whose driver
reports its progress to ``POST /v1/internal/scoring/{id}/report`` with the run's own token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from jobs.bundle import MANIFEST
from jobs.events import ScoringReport
from jobs.score import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    RESERVED,
    ScoringManifest,
    scoring_dir,
)
from services.core.datasets import get_dataset
from services.core.errors import Conflict, Invalid, NotFound, Unauthorized
from services.core.ids import new_id
from services.core.states import ALLOWED, TERMINAL
from services.store.models import Dataset, ModelVersion, ScoringRun, utcnow
from services.store.repositories import EndpointRepository, ModelRepository
from services.store.scoring_runs import ScoringRunRepository

# Rows per batch a model predicts at once; the serving route takes at most as many per request.
MAX_BATCH_SIZE = 10_000


class ScoringRequest(BaseModel):
    """The body of ``POST /v1/endpoints/{name}/batch`` and ``POST /v1/models/{id}/score``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    dataset_id: str = Field(min_length=1, max_length=40, description="A registered dataset")
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY,
        ge=1,
        le=1024,
        description="Actors that predict in parallel, one CPU each; at most the cluster's CPUs",
    )
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE)
    passthrough: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Input columns copied into the result beside each prediction (a 'row' "
        "column, the row's position in the dataset, is always there)",
    )


def scoring_token(secret_key: str, run_id: str) -> str:
    """What a run's driver presents when it reports: it can report on that run and nothing
    else, and needs no storage (the same derivation as job tokens, under its own prefix)."""
    return hmac.new(secret_key.encode(), f"scoring:{run_id}".encode(), hashlib.sha256).hexdigest()


def check_scoring_token(secret_key: str, run_id: str, presented: str) -> None:
    if not hmac.compare_digest(scoring_token(secret_key, run_id), presented):
        raise Unauthorized("invalid scoring token")


# --- requests -------------------------------------------------------------------------------


def endpoint_model(session: Session, name: str) -> ModelVersion:
    """The model an endpoint serves now: a run scores that version even if a promotion
    replaces it while the run is queued."""
    endpoint = EndpointRepository(session).get(name)
    if endpoint is None:
        raise NotFound(f"no endpoint '{name}'")
    model = ModelRepository(session).get(endpoint.model_id)
    assert model is not None  # foreign key
    return model


def get_model(session: Session, model_id: str) -> ModelVersion:
    model = ModelRepository(session).get(model_id)
    if model is None:
        raise NotFound(f"no model '{model_id}'")
    return model


def bundle_inputs(model: ModelVersion) -> list[dict[str, Any]]:
    """The input signature of a model's bundle, from the manifest the registry pinned."""
    try:
        data = (Path(model.bundle_uri) / MANIFEST).read_bytes()
    except OSError as exc:
        raise Conflict(f"the bundle of model '{model.id}' cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != model.bundle_digest:
        raise Conflict(f"the bundle of model '{model.id}' does not match its digest on record")
    signature: list[dict[str, Any]] = json.loads(data)["input_signature"]
    return signature


def _input_problem(
    want: dict[str, Any], have: dict[str, Any] | None, dataset_id: str
) -> str | None:
    name, kind = want["name"], want["kind"]
    if have is None:
        return f"dataset '{dataset_id}' has no column '{name}', an input of the model"
    if kind == "sensitive":  # a mitigated model's group column: any values it can compare
        return None
    if have.get("kind") != kind:
        return (
            f"column '{name}' of dataset '{dataset_id}' is {have.get('kind') or 'unusable'} "
            f"({have.get('type')}); the model reads it as {kind}"
        )
    if kind == "array" and have.get("shape") not in (None, want.get("shape")):
        return (
            f"column '{name}' of dataset '{dataset_id}' holds arrays of shape {have['shape']}; "
            f"the model takes {want.get('shape')}"
        )
    return None


def check_request(model: ModelVersion, dataset: Dataset, req: ScoringRequest) -> None:
    """Every reason the dataset cannot be scored by the model, each naming its field."""
    columns = {c["name"]: c for c in dataset.columns}
    fields: list[dict[str, Any]] = []
    for want in bundle_inputs(model):
        problem = _input_problem(want, columns.get(want["name"]), dataset.id)
        if problem is not None:
            fields.append({"loc": ["dataset_id"], "msg": problem})
    seen: set[str] = set()
    for i, name in enumerate(req.passthrough):
        if name not in columns:
            msg = f"dataset '{dataset.id}' has no column '{name}'"
        elif name in RESERVED:
            msg = f"'{name}' is a column of the result ({', '.join(sorted(RESERVED))})"
        elif name in seen:
            msg = f"'{name}' is listed twice"
        else:
            seen.add(name)
            continue
        fields.append({"loc": ["passthrough", i], "msg": msg})
    if fields:
        raise Invalid(f"dataset '{dataset.id}' cannot be scored by model '{model.id}'", fields)


def check_concurrency(req: ScoringRequest, nodes: list[dict[str, float]]) -> None:
    """Each actor holds one CPU for the whole run: a pool larger than the cluster would wait
    forever for the rest. Nodes unknown (Ray starting): nothing to compare with."""
    cpus = sum(n.get("CPU", 0.0) for n in nodes)
    if nodes and req.concurrency > cpus:
        raise Invalid(
            "the scoring run can never be scheduled on this cluster",
            [
                {
                    "loc": ["concurrency"],
                    "msg": f"{req.concurrency} actors need {req.concurrency} CPUs; the cluster "
                    f"has {cpus:g}",
                }
            ],
        )


def dataset_or_field_error(session: Session, dataset_id: str) -> Dataset:
    try:
        return get_dataset(session, dataset_id)
    except NotFound:
        msg = f"no dataset '{dataset_id}'"
        raise NotFound(msg, [{"loc": ["dataset_id"], "msg": msg}]) from None


def create_run(
    session: Session,
    model: ModelVersion,
    dataset: Dataset,
    req: ScoringRequest,
    endpoint: str | None,
    created_by: str | None,
) -> ScoringRun:
    return ScoringRunRepository(session).add(
        ScoringRun(
            id=new_id("scr"),
            model_id=model.id,
            endpoint=endpoint,
            dataset_id=dataset.id,
            dataset_sha256=dataset.sha256,
            status="queued",
            request=req.model_dump(mode="json"),
            rows_total=dataset.num_rows,
            rows_done=0,
            created_by=created_by,
        )
    )


def get_run(session: Session, run_id: str, for_update: bool = False) -> ScoringRun:
    run = ScoringRunRepository(session).get(run_id, for_update=for_update)
    if run is None:
        raise NotFound(f"no scoring run '{run_id}'")
    return run


def manifest_for(
    artifact_root: Path, run: ScoringRun, model: ModelVersion, dataset: Dataset
) -> ScoringManifest:
    """What the driver reads: ids, locations and digests the control plane resolved."""
    req = ScoringRequest.model_validate(run.request)
    return ScoringManifest(
        run_id=run.id,
        model_id=model.id,
        bundle_uri=model.bundle_uri,
        bundle_digest=model.bundle_digest,
        dataset_id=dataset.id,
        dataset_uri=dataset.uri,
        dataset_sha256=run.dataset_sha256,
        folder=scoring_dir(artifact_root, run.id),
        concurrency=req.concurrency,
        batch_size=req.batch_size,
        passthrough=req.passthrough,
    )


def result_path(artifact_root: Path, run_id: str) -> Path:
    """Where a run's result is, whatever a driver says: the control plane serves only files
    under its own artifact root."""
    return ScoringManifest.output_of(scoring_dir(artifact_root, run_id))


# --- states ---------------------------------------------------------------------------------


def transition(run: ScoringRun, new: str, error: str | None = None) -> None:
    """Runs follow the job state machine: queued → running → succeeded | failed | cancelled."""
    if new not in ALLOWED[run.status]:
        raise Conflict(f"scoring run {run.id} is {run.status}; it cannot become {new}")
    run.status = new
    now = utcnow()
    if new == "running":
        run.started_at = run.started_at or now
    if new in TERMINAL:
        run.finished_at = now
        if run.started_at is None:
            run.started_at = now
    if error is not None:
        run.error = error


def succeed(run: ScoringRun, artifact_root: Path, rows: int) -> None:
    """Record a finished run, if its result file is where it belongs."""
    path = result_path(artifact_root, run.id)
    if not path.is_file():
        transition(run, "failed", error="the driver reported success but wrote no result file")
        return
    if run.status == "queued":
        transition(run, "running")
    run.rows_done = rows
    run.rows_total = rows
    run.output_uri = str(path)
    transition(run, "succeeded")


def apply_report(session: Session, run_id: str, report: ScoringReport, artifact_root: Path) -> bool:
    """Apply a driver's report; False when the run is already settled (a cancelled run's
    driver may still be stopping), which changes nothing."""
    run = get_run(session, run_id, for_update=True)
    if run.status in TERMINAL:
        return False
    if report.status == "running":
        if run.status == "queued":
            transition(run, "running")
        run.rows_done = max(run.rows_done, report.rows_done)
        if report.rows_total is not None:
            run.rows_total = report.rows_total
    elif report.status == "succeeded":
        succeed(run, artifact_root, report.rows_done)
    else:
        transition(run, "failed", error=report.error or "the scoring run failed")
    return True


def request_cancel(session: Session, run_id: str) -> ScoringRun:
    run = get_run(session, run_id, for_update=True)
    if run.status in TERMINAL:
        raise Conflict(f"scoring run {run_id} has already {run.status}")
    transition(run, "cancelled", error="cancelled by request")
    return run


# --- views ----------------------------------------------------------------------------------


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def run_view(run: ScoringRun) -> dict[str, Any]:
    duration = None
    if run.started_at and run.finished_at:
        duration = (run.finished_at - run.started_at).total_seconds()
    total = run.rows_total
    return {
        "id": run.id,
        "status": run.status,
        "model_id": run.model_id,
        "endpoint": run.endpoint,
        "dataset_id": run.dataset_id,
        "dataset_sha256": run.dataset_sha256,
        "request": run.request,
        "progress": {
            "rows_done": run.rows_done,
            "rows_total": total,
            "fraction": (run.rows_done / total) if total else None,
        },
        "output_uri": run.output_uri,
        "error": run.error,
        "created_by": run.created_by,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_s": duration,
    }


def finished_result(session: Session, run_id: str, artifact_root: Path) -> Path:
    run = get_run(session, run_id)
    if run.status != "succeeded":
        raise Conflict(f"scoring run {run_id} is {run.status}; its result exists once it succeeds")
    path = result_path(artifact_root, run_id)
    if not path.is_file():
        raise Conflict(f"the result of scoring run {run_id} is no longer in artifact storage")
    return path


def result_rows(path: Path, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Rows ``offset`` to ``offset + limit`` of a result, and how many it has, read a batch at
    a time so a page of a large result never loads the whole file."""
    pf = pq.ParquetFile(path)
    total = pf.metadata.num_rows
    rows: list[dict[str, Any]] = []
    skipped = 0
    batches: Iterator[Any] = pf.iter_batches(batch_size=max(1024, limit))
    for batch in batches:
        if skipped + batch.num_rows <= offset:
            skipped += batch.num_rows
            continue
        start = max(0, offset - skipped)
        rows += batch.slice(start, limit - len(rows)).to_pylist()
        skipped += batch.num_rows
        if len(rows) >= limit:
            break
    return rows, total
