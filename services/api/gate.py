"""Authentication before a body is read, on every /v1 route that takes one.

FastAPI reads and validates a route's body before it runs the route's dependencies, the token
check among them: without this, a 400 MiB body sent with no token at all was read, parsed and
answered 422, not 401 (+1.1 GB of the API's memory a request). This middleware finds the route
a request will reach and checks its caller first: a user's bearer token (its rate limit too),
or, for the routes the cluster calls (/v1/internal), the HMAC token of the job, scoring run or
endpoint. Only
then does the body limit (services/api/limits.py) let the body through.

Requests no route takes with their method (404, 405) pass on untouched: the router answers
them without reading a body, and with the status codes it always gave.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.errors import error_body
from services.api.limits import BODY_METHODS
from services.core.auth import Principal, authenticate, bearer
from services.core.errors import DomainError

log = logging.getLogger("crucible.api")

# The scope state key that tells the route's own dependency the token was checked here.
CHECKED = "authenticated_before_body"

# A cluster route's own check: (the server's secret, the route's path parameters, the token).
ClusterCheck = Callable[[str, dict[str, Any], str], None]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def cluster_caller(check: ClusterCheck) -> Callable[[Endpoint], Endpoint]:
    """Marks a route the cluster calls (a job's driver, a scoring run, an endpoint's replicas)
    with the HMAC check of its caller's token, which the gate runs before the body is read.
    The route keeps its own check as well: an HMAC costs microseconds, and a route the gate
    no longer reached would stay closed. Goes under the router's decorator."""

    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.cluster_check = check  # type: ignore[attr-defined]
        return endpoint

    return mark


class AuthenticateFirst:
    """See the module docstring. ``routes``: the app's routes, as its routers declare them
    (the app's own router wraps included routers in objects of FastAPI's internals); routes
    the cluster calls are marked with :func:`cluster_caller`."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.routes = [r for r in routes if BODY_METHODS & (getattr(r, "methods", None) or set())]

    def _route_of(self, scope: Scope) -> tuple[Any, dict[str, Any]] | None:
        """The endpoint and path parameters of the route that takes this path and method."""
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                # As the router does: the audit log and the metrics name the route by it,
                # refused here or not.
                scope["route"] = route
                return getattr(route, "endpoint", None), child.get("path_params", {})
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in BODY_METHODS
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        found = self._route_of(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, params = found
        try:
            await self._check(scope, endpoint, params)
        except DomainError as exc:
            body = {**error_body(exc.kind, exc.detail, exc.fields), **exc.extra()}
            response = JSONResponse(body, exc.status_code, exc.headers() or None)
            await response(scope, receive, send)
            return
        except OperationalError as exc:
            log.error("database unavailable: %s", exc)
            body = error_body("unavailable", "the database is unavailable")
            await JSONResponse(body, 503, {"Retry-After": "5"})(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, endpoint: Any, params: dict[str, Any]) -> None:
        app = scope["app"]
        authorization = Headers(scope=scope).get("authorization")
        cluster: ClusterCheck | None = getattr(endpoint, "cluster_check", None)
        if cluster is not None:
            secret = app.state.services.settings.resolved_secret_key
            cluster(secret, params, bearer(authorization))
            return
        principal: Principal = await run_in_threadpool(
            authenticate, app.state.services.db, authorization
        )
        state = scope.setdefault("state", {})
        # For the route's dependency and for the audit log (services/api/audit_log.py).
        state["principal"] = principal
        state[CHECKED] = True
        limiter = getattr(app.state, "rate_limiter", None)
        if limiter is not None:
            limiter.check(principal.token_id)
