"""The OpenAPI document declares the errors each operation can answer, in their real shape.

Every error leaves the API as ``{"error", "detail", "fields"}`` (services/api/errors.py), but
FastAPI's generated document knows only the route's own answer and a 422 in its own shape
(``{"detail": [...]}``), which this API never sends. So, each time the document is built:

- each operation gets the statuses that the machinery shared by all routes answers: under
  /v1 (where every route needs a token, services/api/deps.py) 401, 403, 429, 503 when the
  database is down, and 404 (an id in the path or the body that is not the caller's to see);
  elsewhere 404 where the path names a resource; 413 for a method that may carry a body
  (services/api/limits.py); 400 for a body that cannot be parsed; 422 where it takes
  parameters or a body;
- statuses a route answers itself are declared by the route, ``responses=errors(409)``;
- every error status, whoever declared it, is described by the ``Error`` schema.

Tested against the running API by Schemathesis (tests/services/test_schemathesis.py), which
fails on any status or body the document does not declare.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from services.api.limits import BODY_METHODS

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "detail", "fields"],
    "properties": {
        "error": {"type": "string", "description": "What kind: not_found, invalid, ..."},
        "detail": {"type": "string", "description": "A sentence for people."},
        "fields": {
            "type": "array",
            "description": "The request's fields at fault, each by its path.",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

DESCRIPTIONS = {
    400: "The body could not be parsed",
    401: "No valid token: missing, unknown, expired or revoked, or its user is disabled",
    403: "The token's user has too low a role",
    404: "A resource the request names (in its path or body) does not exist, or is not the "
    "caller's to see",
    409: "Conflicts with the resource's state",
    413: "Request body too large",
    415: "Unsupported request content type",
    422: "Invalid request: `fields` names each bad field by its path",
    429: "Too many requests; `Retry-After` says when to retry",
    502: "The Ray cluster refused or failed the request",
    503: "A service the request needs is unavailable; `Retry-After` may say when to retry",
}

METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route's own error statuses (described by ``Error`` once built)."""
    return {s: {"description": DESCRIPTIONS.get(s, "Error")} for s in statuses}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare every operation's errors."""
    build = app.openapi
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        document = build()  # FastAPI's, cached until the routes change
        if not done or done[0] is not document:
            declare_errors(document)
            done[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def declare_errors(document: dict[str, Any]) -> None:
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if method.upper() not in METHODS:
                continue  # e.g. a path's shared "parameters"
            responses = operation.setdefault("responses", {})
            for status in _shared_statuses(path, method.upper(), operation):
                responses.setdefault(str(status), {"description": DESCRIPTIONS[status]})
            for status, response in responses.items():
                if status[:1] in ("4", "5"):
                    response["content"] = {"application/json": {"schema": ERROR_REF}}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    # FastAPI's own 422 shape, replaced above: referred to by nothing now.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _shared_statuses(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    statuses = []
    if path.startswith("/v1/"):
        # With projects, an id in the path or the body that is not the caller's is a 404.
        statuses += [401, 403, 404, 429, 503]
    elif "{" in path:
        statuses.append(404)
    if method in BODY_METHODS:
        statuses.append(413)
    if "requestBody" in operation:
        statuses.append(400)  # not parsable as its media type (e.g. JSON not in UTF-8)
    if operation.get("parameters") or "requestBody" in operation:
        statuses.append(422)
    return statuses
