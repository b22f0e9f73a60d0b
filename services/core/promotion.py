"""Promotion: register a job's best model as a model version and put it behind an endpoint."""

from __future__ import annotations

import re
from typing import Any

from services.core.errors import Conflict, DomainError, Invalid, NotFound
from services.core.ids import new_id
from services.core.jobs import get_job
from services.orchestrator.serve_deployer import EndpointTarget, ServeDeployer
from services.store.db import Database
from services.store.models import Endpoint, ModelVersion, Promotion, utcnow
from services.store.repositories import (
    DatasetRepository,
    EndpointRepository,
    ModelRepository,
    TokenRepository,
)

ENDPOINT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Paths the Serve proxy answers itself.
RESERVED = frozenset({"-", "api", "healthz", "routes"})


def check_endpoint_name(name: str) -> None:
    if not ENDPOINT_NAME.match(name) or name in RESERVED:
        raise Invalid(
            f"endpoint name '{name}' is not allowed",
            [
                {
                    "loc": ["endpoint"],
                    "msg": "lower-case letters, digits and '-', up to 63 "
                    f"characters, not one of {sorted(RESERVED)}",
                }
            ],
        )


def register_model(db: Database, job_id: str) -> str:
    """The model version of a succeeded job (created on first promotion)."""
    with db.session() as s:
        job = get_job(s, job_id)
        if job.status != "succeeded" or not job.bundle_uri or not job.bundle_digest:
            raise Conflict(f"job {job_id} is {job.status}; only a succeeded job can be promoted")
        models = ModelRepository(s)
        existing = models.for_job(job_id)
        if existing is not None:
            return existing.id
        dataset = DatasetRepository(s).get(job.dataset_id)
        assert dataset is not None
        audit = job.audit or {}
        model = models.add(
            ModelVersion(
                id=new_id("mdl"),
                job_id=job.id,
                trial_key=job.best_trial_key or "",
                dataset_id=dataset.id,
                dataset_sha256=dataset.sha256,
                bundle_uri=job.bundle_uri,
                bundle_digest=job.bundle_digest,
                metrics={"test": job.evaluation, "validation": job.best_metrics},
                audit_passed=audit.get("passed"),
            )
        )
        return model.id


def _targets(
    db: Database, override: tuple[str, str] | None
) -> tuple[list[EndpointTarget], list[str]]:
    with db.session() as s:
        models = ModelRepository(s)
        wanted = {e.name: e.model_id for e in EndpointRepository(s).list()}
        if override is not None:
            wanted[override[0]] = override[1]
        targets = []
        for name, model_id in sorted(wanted.items()):
            m = models.get(model_id)
            assert m is not None
            targets.append(EndpointTarget(name, m.id, m.bundle_uri, m.bundle_digest))
        return targets, TokenRepository(s).active_hashes()


def promote(
    db: Database, deployer: ServeDeployer, job_id: str, endpoint: str, actor: str
) -> dict[str, Any]:
    check_endpoint_name(endpoint)
    model_id = register_model(db, job_id)
    with deployer.lock:
        with db.session() as s:
            current = EndpointRepository(s).get(endpoint)
            previous = current.model_id if current else None
        targets, hashes = _targets(db, (endpoint, model_id))
        try:
            deployer.apply(targets, hashes)
            deployer.wait_running(endpoint, model_id)
        except DomainError as exc:
            # Put Serve back the way the database says it was; the old version keeps serving.
            restore, hashes = _targets(db, None)
            try:
                deployer.apply(restore, hashes)
            finally:
                with db.session() as s:
                    EndpointRepository(s).add_promotion(
                        Promotion(
                            endpoint=endpoint,
                            model_id=model_id,
                            previous_model_id=previous,
                            actor=actor,
                            status="failed",
                            detail=exc.detail,
                        )
                    )
            raise
        with db.session() as s:
            repo = EndpointRepository(s)
            row = repo.get(endpoint)
            if row is None:
                repo.add(Endpoint(name=endpoint, model_id=model_id, status="running"))
            else:
                row.model_id, row.status, row.updated_at = model_id, "running", utcnow()
            repo.add_promotion(
                Promotion(
                    endpoint=endpoint,
                    model_id=model_id,
                    previous_model_id=previous,
                    actor=actor,
                    status="succeeded",
                )
            )
    return {"endpoint": endpoint, "model_id": model_id, "url": deployer.url(endpoint)}


def model_view(m: ModelVersion, job_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """``job_spec``: the spec of the job that trained it, for the parent model it started from
    (transfer learning) and its architecture."""
    model = (job_spec or {}).get("model") or {}
    return {
        "id": m.id,
        "lineage": {
            "job_id": m.job_id,
            "trial_id": m.trial_key,
            "dataset_id": m.dataset_id,
            "dataset_sha256": m.dataset_sha256,
            "parent_model_id": model.get("init_from"),
        },
        "bundle_digest": m.bundle_digest,
        "metrics": m.metrics,
        "audit_passed": m.audit_passed,
        "created_at": m.created_at.isoformat(),
    }


def endpoint_view(db: Database, deployer: ServeDeployer, name: str) -> dict[str, Any]:
    with db.session() as s:
        repo = EndpointRepository(s)
        e = repo.get(name)
        if e is None:
            raise NotFound(f"no endpoint '{name}'")
        history = [
            {
                "model_id": p.model_id,
                "previous_model_id": p.previous_model_id,
                "actor": p.actor,
                "status": p.status,
                "detail": p.detail,
                "at": p.created_at.isoformat(),
            }
            for p in repo.promotions(name)
        ]
        return {
            "name": e.name,
            "model_id": e.model_id,
            "status": e.status,
            "url": deployer.url(e.name),
            "history": history,
        }
