"""Promotion: register a job's best model as a model version, judge it against the spec's
gates, and put it behind an endpoint without a moment where the endpoint cannot answer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs.spec import LOWER_IS_BETTER, PromotionSpec, ServingSpec
from services.core import rollout
from services.core.errors import Conflict, DomainError, Invalid, NotFound
from services.core.ids import new_id
from services.core.jobs import get_job
from services.orchestrator.serve_deployer import ServeDeployer
from services.store.db import Database
from services.store.models import Job, ModelVersion, Promotion
from services.store.projects import ProjectRepository
from services.store.repositories import (
    DatasetRepository,
    EndpointRepository,
    JobRepository,
    ModelRepository,
)

log = logging.getLogger("crucible.promotion")

ENDPOINT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Paths the Serve proxy answers itself.
RESERVED = frozenset({"-", "api", "healthz", "routes"})
AUTO_ACTOR = "auto"


class GateFailed(Conflict):
    """The model misses a promotion gate; ``fields`` name each failed check with its numbers."""


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


@functools.cache
def code_version() -> dict[str, Any]:
    """The control plane's package version and git commit (None when not a checkout). Jobs run
    this same tree (Ray's working_dir), so it names the code that trained the model."""
    try:
        package: str | None = metadata.version("crucible")
    except metadata.PackageNotFoundError:
        package = None
    commit = os.environ.get("CRUCIBLE_GIT_COMMIT")
    root = Path(__file__).resolve().parents[2]
    if commit is None and (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            commit = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"package": package, "git_commit": commit}


Candidate = Literal["best", "mitigated", "compressed"]


def default_candidate(job: Job) -> Candidate:
    """What a promotion that names no candidate serves: the compressed variant when the spec
    asked for one (promotion.compress or .prune "produces the served variant"), else the
    best model."""
    return "compressed" if promotion_spec(job).compression_requested else "best"


def candidate_outcome(job: Job, candidate: Candidate) -> dict[str, Any]:
    """What a job produced for ``candidate``: its bundle, test evaluation and audit. The
    mitigated one exists when the spec asked for audit.mitigation, the compressed one when it
    asked for promotion.compress or .prune (409 otherwise)."""
    if candidate == "best":
        return {
            "bundle": {"uri": job.bundle_uri, "digest": job.bundle_digest},
            "evaluation": {k: v for k, v in (job.evaluation or {}).items() if k != "compression"},
            "audit": job.audit or {},
        }
    if candidate == "compressed":
        compressed = (job.evaluation or {}).get("compression")
        if not compressed:
            raise Conflict(
                f"job {job.id} has no compressed candidate (the spec did not ask for "
                "promotion.compress or promotion.prune)"
            )
        # A regression without sensitive features has no audit; gates read it as empty.
        return {**compressed, "audit": compressed.get("audit") or {}}
    mitigation = (job.audit or {}).get("mitigation")
    if not mitigation:
        raise Conflict(
            f"job {job.id} has no mitigated candidate (the spec did not ask for audit.mitigation)"
        )
    return mitigation


def register_model(db: Database, job_id: str, candidate: Candidate = "best") -> str:
    """The model version of a succeeded job's candidate (created on first promotion)."""
    try:
        return _register_model(db, job_id, candidate)
    except IntegrityError:
        # Two promotions of one job at once (a user and promotion.auto): one row won.
        with db.session() as s:
            existing = ModelRepository(s).for_job(job_id, candidate)
            assert existing is not None
            return existing.id


def _register_model(db: Database, job_id: str, candidate: Candidate) -> str:
    with db.session() as s:
        job = get_job(s, job_id)
        if job.status != "succeeded" or not job.bundle_uri or not job.bundle_digest:
            raise Conflict(f"job {job_id} is {job.status}; only a succeeded job can be promoted")
        models = ModelRepository(s)
        existing = models.for_job(job_id, candidate)
        if existing is not None:
            return existing.id
        outcome = candidate_outcome(job, candidate)
        dataset = DatasetRepository(s).get(job.dataset_id)
        assert dataset is not None
        model = models.add(
            ModelVersion(
                id=new_id("mdl"),
                job_id=job.id,
                candidate=candidate,
                trial_key=job.best_trial_key or "",
                dataset_id=dataset.id,
                dataset_sha256=dataset.sha256,
                bundle_uri=outcome["bundle"]["uri"],
                bundle_digest=outcome["bundle"]["digest"],
                metrics=_metrics(outcome, job.best_metrics),
                audit_passed=outcome["audit"].get("passed"),
                code_version=code_version(),
            )
        )
        return model.id


def _metrics(outcome: dict[str, Any], validation: dict[str, Any] | None) -> dict[str, Any]:
    """A model version's figures: its test evaluation, the best trial's validation metrics, and
    for a compressed variant its compression report (sizes, latency, metrics before/after)."""
    out: dict[str, Any] = {"test": outcome["evaluation"], "validation": validation}
    if "size_ratio" in outcome:
        out["compression"] = {
            k: v for k, v in outcome.items() if k not in ("evaluation", "audit", "bundle")
        }
    return out


# --- gates ------------------------------------------------------------------------------------


def promotion_spec(job: Job) -> PromotionSpec:
    try:
        return PromotionSpec.model_validate((job.spec or {}).get("promotion") or {})
    except ValidationError:
        # The spec was valid when submitted; a section an older version wrote differently
        # must not make a model unpromotable, so it gates nothing (an override is not needed).
        log.warning("job %s has a promotion section this version cannot read", job.id)
        return PromotionSpec()


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def judge(
    spec: PromotionSpec,
    evaluation: dict[str, Any] | None,
    audit_passed: bool | None,
    serving: ModelVersion | None,
) -> list[dict[str, Any]]:
    """Every gate check with its numbers; ``serving``: the model the endpoint serves now."""
    test = evaluation or {}
    checks: list[dict[str, Any]] = []
    for metric, bound in spec.require.bounds().items():
        value = test.get(metric)
        check: dict[str, Any] = {
            "check": "require",
            "loc": ["promotion", "require", metric],
            "metric": metric,
            "value": value,
            "min": bound.min,
            "max": bound.max,
        }
        if not isinstance(value, int | float):
            check.update(passed=False, msg=f"the test evaluation has no '{metric}'")
        elif bound.min is not None and value < bound.min:
            msg = f"{metric} {_fmt(value)} is below the minimum {_fmt(bound.min)}"
            check.update(passed=False, msg=msg)
        elif bound.max is not None and value > bound.max:
            msg = f"{metric} {_fmt(value)} is above the maximum {_fmt(bound.max)}"
            check.update(passed=False, msg=msg)
        else:
            check.update(passed=True, msg=f"{metric} {_fmt(value)} is within its bounds")
        checks.append(check)
    if spec.require.audit_passed:
        checks.append(
            {
                "check": "audit_passed",
                "loc": ["promotion", "require", "audit_passed"],
                "value": audit_passed,
                "passed": audit_passed is True,
                "msg": "the fairness audit passed"
                if audit_passed
                else "the fairness audit did not pass",
            }
        )
    limit = spec.max_regression
    if limit is not None:
        checks.append(_regression_check(limit.metric, limit.tolerance, test, serving))
    return checks


def _regression_check(
    metric: str, tolerance: float, test: dict[str, Any], serving: ModelVersion | None
) -> dict[str, Any]:
    value = test.get(metric)
    check: dict[str, Any] = {
        "check": "max_regression",
        "loc": ["promotion", "max_regression", "metric"],
        "metric": metric,
        "value": value,
        "tolerance": tolerance,
        "serving_model_id": serving.id if serving else None,
        "serving_value": None,
    }
    if serving is None:
        return {**check, "passed": True, "msg": "nothing serves the endpoint yet"}
    old = ((serving.metrics or {}).get("test") or {}).get(metric)
    check["serving_value"] = old
    if not isinstance(old, int | float):
        # Nothing to compare with is not a reason to keep a model out.
        return {**check, "passed": True, "msg": f"the serving model has no '{metric}'"}
    if not isinstance(value, int | float):
        return {**check, "passed": False, "msg": f"the test evaluation has no '{metric}'"}
    worse_by = value - old if metric in LOWER_IS_BETTER else old - value
    passed = worse_by <= tolerance
    relation = "within" if passed else "beyond"
    msg = (
        f"{metric} {_fmt(value)} against {_fmt(old)} for {serving.id}: worse by "
        f"{_fmt(max(worse_by, 0.0))}, {relation} the tolerance {_fmt(tolerance)}"
    )
    return {**check, "passed": passed, "msg": msg}


def promote(
    db: Database,
    deployer: ServeDeployer,
    job_id: str,
    endpoint: str,
    actor: str,
    reason: str | None = None,
    kind: str = "promote",
    candidate: Candidate | None = None,
    traffic: int = 100,
    serving: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Promote the job's model to ``endpoint`` if it passes the spec's gates. ``reason``: an
    override, written down; with it the gates are judged and stored but do not stop the
    promotion. ``candidate``: None for the job's default (:func:`default_candidate`).
    ``traffic`` below 100 starts (or moves) a canary: that percent of requests goes to this
    model, the rest to the version serving now; promoting the canary's model with 100 ends it.
    ``serving``: settings that override the spec's promotion.serving for the endpoint."""
    check_endpoint_name(endpoint)
    if reason is not None and not reason.strip():
        raise Invalid("an override needs a written reason", [{"loc": ["reason"], "msg": "empty"}])
    if candidate is None:
        with db.session() as s:
            candidate = default_candidate(get_job(s, job_id))
    model_id = register_model(db, job_id, candidate)
    with deployer.lock:
        with db.session() as s:
            job = get_job(s, job_id)
            models = ModelRepository(s)
            model = models.get(model_id)
            assert model is not None
            current = EndpointRepository(s).get(endpoint)
            # Endpoint names are one namespace (they are Serve's routes): a name another
            # project serves under is taken, though the endpoint itself stays invisible.
            if current is not None and ProjectRepository(s).of_endpoint(endpoint) != job.project_id:
                raise Conflict(
                    f"the endpoint name '{endpoint}' is taken by another project",
                    [{"loc": ["endpoint"], "msg": "taken by another project"}],
                )
            previous = current.model_id if current else None
            canary = current.canary_model_id if current else None
            serving_model = models.get(previous) if previous else None
            outcome = candidate_outcome(job, candidate)
            spec = promotion_spec(job)
            checks = judge(spec, outcome["evaluation"], model.audit_passed, serving_model)
            fairness = fairness_vs_serving(s, outcome["audit"], serving_model)
            # A canary being moved or completed keeps the endpoint's settings; a new version
            # brings its spec's.
            base = rollout.serving_of(current) if canary == model_id else spec.serving
        settings = serving_settings(base, serving)
        _check_traffic(endpoint, model_id, previous, canary, traffic)
        failed = [c for c in checks if not c["passed"]]
        history = {
            "endpoint": endpoint,
            "model_id": model_id,
            "previous_model_id": previous,
            "actor": actor,
            "kind": kind,
            "reason": reason,
            "checks": checks,
        }
        if failed and reason is None:
            detail = "; ".join(c["msg"] for c in failed)
            rollout.record(db, Promotion(status="rejected", detail=detail, **history))
            raise GateFailed(
                f"model {model_id} failed {len(failed)} promotion gate(s): {detail}",
                [{k: v for k, v in c.items() if k != "check"} for c in failed],
            )
        state = rollout.current_state(db, endpoint)
        if state is not None and state.canary is not None:
            # The canary's own model: move its share, or give it all requests.
            assert state.canary.model_id == model_id
            if traffic == 100:
                keep = dataclasses.replace(state.canary, serving=settings)
                rollout.end_canary(db, deployer, keep, history, "canary completed: all requests")
            else:
                rollout.move_canary(db, deployer, state, traffic, history)
        elif previous == model_id:
            # Already serving: keep it as it is, and say so in the history.
            rollout.record(db, Promotion(status="succeeded", detail="already serving", **history))
        elif traffic == 100 or previous is None:
            rollout.blue_green(db, deployer, endpoint, model_id, settings, history)
        else:
            rollout.start_canary(
                db, deployer, endpoint, previous, model_id, traffic, settings, history
            )
    return {
        "endpoint": endpoint,
        "model_id": model_id,
        "candidate": candidate,
        "url": deployer.url(endpoint),
        "checks": checks,
        "overridden": bool(failed),
        "fairness_vs_serving": fairness,
        "traffic": traffic,
    }


def serving_settings(base: ServingSpec, override: dict[str, Any] | None) -> ServingSpec:
    """``base`` with a promotion request's overrides; a bad one is a 422 naming its field."""
    if not override:
        return base
    try:
        return ServingSpec.model_validate({**base.model_dump(), **override})
    except ValidationError as exc:
        raise Invalid(
            "invalid serving settings",
            [{"loc": ["serving", *e["loc"]], "msg": e["msg"]} for e in exc.errors()],
        ) from None


def _check_traffic(
    endpoint: str, model_id: str, previous: str | None, canary: str | None, traffic: int
) -> None:
    loc = ["traffic", "new"]
    if not 1 <= traffic <= 100:
        raise Invalid("traffic.new is a percent of requests", [{"loc": loc, "msg": "1 to 100"}])
    if canary is not None and model_id != canary:
        if model_id == previous:
            raise Conflict(
                f"{model_id} is the version a canary on '{endpoint}' runs beside; roll back to "
                "end the canary"
            )
        raise Conflict(
            f"endpoint '{endpoint}' runs a canary of {canary}: promote it with all traffic or "
            "roll it back first"
        )
    if traffic < 100 and canary is None:
        if previous is None:
            msg = "a canary needs a version already serving the endpoint"
            raise Invalid(msg, [{"loc": loc, "msg": msg}])
        if previous == model_id:
            msg = f"{model_id} already serves all of '{endpoint}'"
            raise Invalid(msg, [{"loc": loc, "msg": msg}])


def fairness_vs_serving(
    s: Session, audit: dict[str, Any], serving: ModelVersion | None
) -> list[dict[str, Any]]:
    """Each fairness check of the model being promoted beside the same check of the model the
    endpoint serves now, and whether the disparity got better or worse (a ratio is better
    higher, a difference lower). Empty for a new endpoint."""
    if serving is None:
        return []
    old_job = JobRepository(s).get(serving.job_id)
    if old_job is None:
        return []
    old_audit = candidate_outcome(old_job, serving.candidate)["audit"]  # type: ignore[arg-type]
    old = {_check_key(c): c for c in old_audit.get("checks", [])}
    out = []
    for c in audit.get("checks", []):
        before = old.get(_check_key(c))
        if before is None or c.get("value") is None or before.get("value") is None:
            continue
        higher_is_better = str(c["metric"]).endswith("_ratio")
        delta = c["value"] - before["value"]
        change = (
            "same"
            if abs(delta) < 1e-12
            else ("better" if (delta > 0) == higher_is_better else "worse")
        )
        out.append(
            {
                "feature": c["feature"],
                "metric": c["metric"],
                "method": c["method"],
                "new": c["value"],
                "serving": before["value"],
                "new_passed": c["passed"],
                "serving_passed": before["passed"],
                "change": change,
            }
        )
    return out


def _check_key(c: dict[str, Any]) -> tuple[Any, ...]:
    return (c.get("feature"), c.get("metric"), c.get("method"), c.get("compare"))


def rollback(db: Database, deployer: ServeDeployer, endpoint: str, actor: str) -> dict[str, Any]:
    """End a canary (all requests back to the version it ran beside), or else serve the
    version the current one replaced, the same blue/green way."""
    with deployer.lock:
        state = rollout.current_state(db, endpoint)
        if state is None:
            raise NotFound(f"no endpoint '{endpoint}'")
        history: dict[str, Any] = {
            "endpoint": endpoint,
            "actor": actor,
            "kind": "rollback",
            "reason": None,
            "checks": None,
        }
        if state.canary is not None:
            stable = state.stable.model_id
            history |= {"model_id": stable, "previous_model_id": state.canary.model_id}
            rollout.end_canary(db, deployer, state.stable, history, "canary rolled back")
            return {"endpoint": endpoint, "model_id": stable, "url": deployer.url(endpoint)}
        with db.session() as s:
            repo = EndpointRepository(s)
            current = repo.get(endpoint)
            assert current is not None
            # The promotion that put the current version there names what it replaced.
            arrival = next(
                (
                    p
                    for p in repo.promotions(endpoint)
                    if p.status == "succeeded"
                    and p.model_id == current.model_id
                    and p.previous_model_id != current.model_id
                ),
                None,
            )
            target = arrival.previous_model_id if arrival else None
            if target is None:
                raise Conflict(f"endpoint '{endpoint}' has no previous version to roll back to")
        history |= {"model_id": target, "previous_model_id": state.stable.model_id}
        rollout.blue_green(db, deployer, endpoint, target, state.stable.serving, history)
    return {"endpoint": endpoint, "model_id": target, "url": deployer.url(endpoint)}


def auto_promote(db: Database, deployer: ServeDeployer, job_id: str) -> dict[str, Any] | None:
    """Promote a succeeded job whose spec asks for it (``promotion.auto``), once: a job whose
    model already has an automatic attempt recorded is left alone. Gate failures and failed
    deployments are recorded in the endpoint's history, not raised."""
    with db.session() as s:
        job = get_job(s, job_id)
        spec = promotion_spec(job)
        if job.status != "succeeded" or not spec.auto or spec.auto_endpoint is None:
            return None
        model = ModelRepository(s).for_job(job_id, default_candidate(job))
        if model is not None and any(
            p.kind == "auto" for p in EndpointRepository(s).promotions_of_model(model.id)
        ):
            return None
    try:
        return promote(db, deployer, job_id, spec.auto_endpoint, AUTO_ACTOR, kind="auto")
    except DomainError as exc:
        log.info("auto promotion of job %s to %s: %s", job_id, spec.auto_endpoint, exc.detail)
        return None


# --- views ------------------------------------------------------------------------------------


def model_view(m: ModelVersion, job: Job | None = None) -> dict[str, Any]:
    """``job``: the job that trained it, for its spec, the parent model it started from
    (transfer learning) and its audit (the candidate's own: a mitigated or compressed variant
    was audited again)."""
    spec = job.spec if job is not None else None
    model = (spec or {}).get("model") or {}
    audit = job.audit if job is not None else None
    if job is not None and m.candidate != "best":
        # Where the job's outcome no longer holds the candidate, the job's audit is shown.
        with contextlib.suppress(Conflict):
            audit = candidate_outcome(job, m.candidate)["audit"]  # type: ignore[arg-type]
    return {
        "id": m.id,
        "candidate": m.candidate,
        "lineage": {
            "job_id": m.job_id,
            "trial_id": m.trial_key,
            "dataset_id": m.dataset_id,
            "dataset_sha256": m.dataset_sha256,
            "parent_model_id": model.get("init_from"),
            "bundle_digest": m.bundle_digest,
            "code_version": m.code_version,
        },
        "bundle_digest": m.bundle_digest,
        # Where the bundle lies, for offline use (load_bundle checks it against the digest).
        "bundle_uri": m.bundle_uri,
        "spec": spec,
        "metrics": m.metrics,
        "audit_passed": m.audit_passed,
        "audit": _audit_summary(audit),
        "created_at": m.created_at.isoformat(),
    }


def _audit_summary(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    """The verdict and its checks; the full document stays at GET /v1/jobs/{id}/audit."""
    if audit is None:
        return None
    return {"passed": audit.get("passed"), "checks": audit.get("checks", [])}


def endpoint_view(db: Database, deployer: ServeDeployer, name: str) -> dict[str, Any]:
    with db.session() as s:
        repo = EndpointRepository(s)
        e = repo.get(name)
        if e is None:
            raise NotFound(f"no endpoint '{name}'")
        history = [
            {
                "kind": p.kind or "promote",
                "model_id": p.model_id,
                "previous_model_id": p.previous_model_id,
                "actor": p.actor,
                "status": p.status,
                "detail": p.detail,
                "reason": p.reason,
                "checks": p.checks,
                "at": p.created_at.isoformat(),
            }
            for p in repo.promotions(name)
        ]
        canary = (
            {"model_id": e.canary_model_id, "percent": e.canary_percent}
            if e.canary_model_id
            else None
        )
        return {
            "name": e.name,
            "model_id": e.model_id,
            "status": e.status,
            "url": deployer.url(e.name),
            # While a canary runs, model_id still takes the rest of the requests.
            "canary": canary,
            "serving": rollout.serving_of(e).model_dump(mode="json"),
            "alert": e.alert,
            "history": history,
        }
