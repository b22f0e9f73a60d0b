"""Dependencies injected into routes: the app's services and the caller's identity and role.

Roles are enforced here and only here. Every /v1 route takes one of these:

- ``CurrentUser``: the default by method: any role may read (GET, HEAD), a state change needs
  ``member`` or above;
- ``Viewer``, ``Member``, ``Approver``, ``Admin``: the route says what it needs, whatever its
  method (``Viewer`` on a POST lets any user manage their own tokens).

A role too low is ``403 {"error": "forbidden", "detail": "needs role approver"}``. The rate
limit per token is checked here too, right after the token is. A route that takes a body has
had both checked before its body was read (services/api/gate.py); the dependency then takes
that caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from services.api.gate import CHECKED
from services.config import Settings
from services.core.auth import Principal, authenticate
from services.core.errors import Forbidden
from services.orchestrator.ray_gateway import RayGateway
from services.orchestrator.reconciler import Reconciler
from services.orchestrator.serve_deployer import ServeDeployer
from services.store.db import Database

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Numbers from a query reach the database as they are: an offset is a 64-bit integer there, an
# event or audit log id a 32-bit one (INTEGER columns). Larger ones are a 422 here rather than
# an overflow in the database driver (a 500).
MAX_OFFSET = 2**63 - 1
MAX_ID = 2**31 - 1


@dataclass
class Services:
    settings: Settings
    db: Database
    gateway: RayGateway
    reconciler: Reconciler
    deployer: ServeDeployer


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def authenticated(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """The token's user (401 without a valid one), within its rate limit (429)."""
    state = request.scope.get("state", {})
    if state.get(CHECKED):
        # A route with a body: checked, rate limit included, before the body was read.
        checked: Principal = state["principal"]
        return checked
    principal = authenticate(services.db, authorization)
    # For the audit log, which runs outside the route (services/api/audit_log.py).
    request.state.principal = principal
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        limiter.check(principal.token_id)
    return principal


Authenticated = Annotated[Principal, Depends(authenticated)]


def _demand(principal: Principal, role: str) -> Principal:
    if not principal.has(role):
        raise Forbidden(f"needs role {role}")
    return principal


def by_method(request: Request, principal: Authenticated) -> Principal:
    return _demand(principal, "viewer" if request.method in READ_METHODS else "member")


def require(role: str) -> Callable[[Principal], Principal]:
    def dependency(principal: Authenticated) -> Principal:
        return _demand(principal, role)

    dependency.__name__ = f"require_{role}"
    return dependency


CurrentUser = Annotated[Principal, Depends(by_method)]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Member = Annotated[Principal, Depends(require("member"))]
Approver = Annotated[Principal, Depends(require("approver"))]
Admin = Annotated[Principal, Depends(require("admin"))]
