"""Putting model versions behind endpoints: blue/green switches, canaries and their end.

Every change follows one rule: the endpoint's route only ever moves to an application that is
already RUNNING (its replicas loaded the bundle and predicted on its sample rows). A version
that cannot start is removed again and recorded as a failed promotion; what served before
keeps serving. The database says what each endpoint should serve; ``states`` turns that into
the Serve config, so every change is "edit the rows' view, apply, then commit the rows".

Callers hold ``deployer.lock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from jobs.spec import ServingSpec
from services.core.errors import DomainError
from services.orchestrator.serve_deployer import (
    EndpointState,
    EndpointTarget,
    ServeDeployer,
    ServingAccess,
)
from services.store.db import Database
from services.store.models import Endpoint, Promotion, utcnow
from services.store.projects import ProjectRepository
from services.store.repositories import EndpointRepository, ModelRepository, TokenRepository


def serving_of(e: Endpoint | None) -> ServingSpec:
    """An endpoint's serving settings; rows from before they were kept get the defaults."""
    return ServingSpec.model_validate(e.serving) if e is not None and e.serving else ServingSpec()


def _target(s: Session, endpoint: str, model_id: str, serving: ServingSpec) -> EndpointTarget:
    m = ModelRepository(s).get(model_id)
    assert m is not None
    project = ProjectRepository(s).of_model(m.id)
    return EndpointTarget(endpoint, m.id, m.bundle_uri, m.bundle_digest, serving, project)


def target(db: Database, endpoint: str, model_id: str, serving: ServingSpec) -> EndpointTarget:
    with db.session() as s:
        return _target(s, endpoint, model_id, serving)


def access(s: Session) -> ServingAccess:
    """Who may call which endpoint now: the active tokens, an admin's everywhere and anyone
    else's in their projects (revoked, expired and disabled users' tokens nowhere)."""
    everywhere: set[str] = set()
    by_project: dict[str, set[str]] = {}
    for token_hash, role, project in TokenRepository(s).active_holders():
        if role == "admin":
            everywhere.add(token_hash)
        elif project is not None:
            by_project.setdefault(project, set()).add(token_hash)
    return ServingAccess(frozenset(everywhere), {p: frozenset(h) for p, h in by_project.items()})


def states(
    db: Database, replace: EndpointState | None = None
) -> tuple[list[EndpointState], ServingAccess]:
    """What every endpoint serves per the database, with ``replace`` standing in for its
    endpoint's state (added when the endpoint is new), and who may call it."""
    with db.session() as s:
        out: dict[str, EndpointState] = {}
        for e in EndpointRepository(s).list():
            sv = serving_of(e)
            stable = _target(s, e.name, e.model_id, sv)
            canary = _target(s, e.name, e.canary_model_id, sv) if e.canary_model_id else None
            out[e.name] = EndpointState(stable, canary, e.canary_percent or 0)
        if replace is not None:
            out[replace.name] = replace
        return [out[k] for k in sorted(out)], access(s)


def record(db: Database, promotion: Promotion) -> None:
    with db.session() as s:
        EndpointRepository(s).add_promotion(promotion)


def _commit(db: Database, new: EndpointState, history: Promotion) -> None:
    """The rows catch up with what Serve now serves."""
    with db.session() as s:
        repo = EndpointRepository(s)
        row = repo.get(new.name)
        if row is None:
            row = repo.add(Endpoint(name=new.name, model_id=new.stable.model_id, status="running"))
        row.model_id, row.status, row.updated_at = new.stable.model_id, "running", utcnow()
        row.canary_model_id = new.canary.model_id if new.canary else None
        row.canary_percent = new.percent if new.canary else None
        row.serving = new.stable.serving.model_dump(mode="json")
        repo.add_promotion(history)


def _start(
    db: Database,
    deployer: ServeDeployer,
    candidate: EndpointTarget,
    failed: Callable[[str], Promotion],
    staged_split: EndpointState | None = None,
) -> None:
    """Start ``candidate`` (and a canary's split) beside what serves now; on failure put the
    config back, record ``failed(reason)`` and raise."""
    live, who = states(db)
    try:
        deployer.apply(live, who, candidate)
        deployer.wait_running(candidate)
        if staged_split is not None:
            # Read again: starting the candidate can take minutes, and who may call the
            # endpoint may have changed meanwhile.
            live, who = states(db)
            deployer.apply(live, who, candidate, staged_split)
            deployer.wait_running(staged_split.split_app)
    except DomainError as exc:
        try:
            deployer.apply(*states(db))
        finally:
            record(db, failed(exc.detail))
        raise


def _switch(db: Database, deployer: ServeDeployer, new: EndpointState, history: Promotion) -> None:
    live, who = states(db, new)
    deployer.apply(live, who)
    _commit(db, new, history)
    deployer.wait_settled(live)
    deployer.wait_routed(new.name)


def blue_green(
    db: Database,
    deployer: ServeDeployer,
    endpoint: str,
    model_id: str,
    serving: ServingSpec,
    history: dict[str, Any],
) -> None:
    """Serve ``model_id`` alone at ``endpoint``: start it beside the live version, wait until
    it predicts, then move the route (a running canary ends with it)."""
    new = EndpointState(target(db, endpoint, model_id, serving))
    _start(db, deployer, new.stable, lambda why: Promotion(status="failed", detail=why, **history))
    _switch(db, deployer, new, Promotion(status="succeeded", **history))


def start_canary(
    db: Database,
    deployer: ServeDeployer,
    endpoint: str,
    stable_id: str,
    model_id: str,
    percent: int,
    serving: ServingSpec,
    history: dict[str, Any],
) -> None:
    """Send ``percent`` of the endpoint's requests to ``model_id``, the rest to the version
    serving now: the new version and the split start with no HTTP route, then the endpoint's
    route moves to the split."""
    new = EndpointState(
        target(db, endpoint, stable_id, serving), target(db, endpoint, model_id, serving), percent
    )
    assert new.canary is not None
    _start(
        db,
        deployer,
        new.canary,
        lambda why: Promotion(status="failed", detail=why, **history),
        staged_split=new,
    )
    detail = f"canary: {percent}% of requests"
    _switch(db, deployer, new, Promotion(status="succeeded", detail=detail, **history))


def move_canary(
    db: Database,
    deployer: ServeDeployer,
    current: EndpointState,
    percent: int,
    history: dict[str, Any],
) -> None:
    """Change a running canary's share: the split is reconfigured in place."""
    new = EndpointState(current.stable, current.canary, percent)
    detail = f"canary: {percent}% of requests"
    _switch(db, deployer, new, Promotion(status="succeeded", detail=detail, **history))


def end_canary(
    db: Database,
    deployer: ServeDeployer,
    keep: EndpointTarget,
    history: dict[str, Any],
    detail: str,
) -> None:
    """Serve ``keep`` (one of the canary's two versions, already running) alone again."""
    _switch(
        db, deployer, EndpointState(keep), Promotion(status="succeeded", detail=detail, **history)
    )


def current_state(db: Database, endpoint: str) -> EndpointState | None:
    live, _ = states(db)
    return next((e for e in live if e.name == endpoint), None)
