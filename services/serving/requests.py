"""What every serving ingress does with an HTTP request before a model sees it: check the
bearer token, name the request, read the JSON body, and answer errors in the API's shape."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MAX_INSTANCES = 10_000
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Rejected(Exception):
    """A request answered with an error: (status, the API's error JSON)."""

    def __init__(self, status: int, kind: str, detail: str, loc: list[Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        fields = [{"loc": loc, "msg": detail}] if loc else []
        self.body = {"error": kind, "detail": detail, "fields": fields}


def error(status: int, kind: str, detail: str, loc: list[Any] | None = None) -> JSONResponse:
    return JSONResponse(Rejected(status, kind, detail, loc).body, status_code=status)


def authorized(request: Request, token_hashes: frozenset[str]) -> bool:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hashlib.sha256(token.strip().encode()).hexdigest() in token_hashes


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is a sane one (so feedback can use the caller's
    own ids), a fresh one otherwise."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


async def read_payload(request: Request, token_hashes: frozenset[str]) -> Response | Any:
    """The parsed JSON body, or the error response that answers the request."""
    if not authorized(request, token_hashes):
        # One answer for a token that is not valid and for one of a user outside the
        # endpoint's project: the replica holds only the hashes it takes, so it cannot tell.
        return error(
            401,
            "unauthorized",
            "missing or invalid bearer token, or its user is not in this endpoint's project",
        )
    if request.method != "POST":
        return error(405, "method_not_allowed", 'POST {"instances": [...]}')
    try:
        return json.loads(await request.body())
    except ValueError:
        return error(400, "bad_request", "the body is not JSON")


def instances_of(body: Any) -> list[dict[str, Any]]:
    """The request's instances; Rejected (422) says what is wrong with them."""
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list) or not instances:
        raise Rejected(422, "invalid", "'instances' must be a non-empty list", ["instances"])
    if len(instances) > MAX_INSTANCES:
        raise Rejected(
            422, "invalid", f"at most {MAX_INSTANCES} instances per request", ["instances"]
        )
    return instances
