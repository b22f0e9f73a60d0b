"""What every serving ingress does with an HTTP request before a model sees it: check the
bearer token, name the request, read the JSON body within its size limit, and answer errors in
the API's shape."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MAX_INSTANCES = 10_000
# The API's own default (CRUCIBLE_MAX_BODY_BYTES); the deployer passes the configured value.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
# What a client is told to wait when a replica cannot answer now (its model is not loaded).
UNAVAILABLE_RETRY_AFTER_S = 5
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Rejected(Exception):
    """A request answered with an error: (status, the API's error JSON)."""

    def __init__(self, status: int, kind: str, detail: str, loc: list[Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        fields = [{"loc": loc, "msg": detail}] if loc else []
        self.body = {"error": kind, "detail": detail, "fields": fields}


def error(status: int, kind: str, detail: str, loc: list[Any] | None = None) -> JSONResponse:
    return respond(status, Rejected(status, kind, detail, loc).body)


def respond(status: int, body: dict[str, Any]) -> JSONResponse:
    """The JSON answer; a 503 says when to try again, like Serve's own overload answer."""
    headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


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


async def read_payload(
    request: Request, token_hashes: frozenset[str], max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> Response | Any:
    """The parsed JSON body, or the error response that answers the request. A body is read
    only once its token checked out, and never past ``max_body_bytes``."""
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
    too_large = f"a request body is at most {max_body_bytes} bytes"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_body_bytes:
        return _too_large(too_large)
    raw = bytearray()
    # Chunked, or a Content-Length that lies: count what arrives and stop at the limit.
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body_bytes:
            return _too_large(too_large)
    try:
        return parse_json(bytes(raw))
    except Rejected as exc:
        return respond(exc.status, exc.body)
    except RecursionError:
        return error(400, "bad_request", "the body is not JSON: it is nested too deeply")
    except ValueError:
        return error(400, "bad_request", "the body is not JSON")


def _too_large(detail: str) -> Response:
    response = error(413, "payload_too_large", detail)
    # The rest of the body is never read: the connection cannot carry another request.
    response.headers["Connection"] = "close"
    return response


def parse_json(raw: bytes) -> Any:
    """JSON as RFC 8259 has it: Python's parser also takes ``NaN``, ``Infinity`` and
    ``-Infinity``, and turns a number too large for a float (``1e400``) into inf; any of
    them is a 422 naming where it is (``["instances", i, column]``), since no model answer
    can come of it and JSON cannot carry it back."""
    non_finite = False

    def constant(text: str) -> float:
        nonlocal non_finite
        non_finite = True
        return float(text)

    def number(text: str) -> float:
        nonlocal non_finite
        value = float(text)
        non_finite = non_finite or math.isinf(value)
        return value

    body = json.loads(raw, parse_constant=constant, parse_float=number)
    if non_finite:
        loc = _non_finite_at(body)
        raise Rejected(
            422,
            "invalid",
            f"{_dotted(loc)} is not a finite number (JSON has no NaN or Infinity, and this "
            "number is too large for a float)",
            loc,
        )
    return body


def _non_finite_at(body: Any) -> list[Any]:
    """Where the first NaN or infinity is: an instance's column (the whole value of an array
    column), else its full path. Iterative: a body may nest as deep as the parser allows."""
    stack: list[tuple[list[Any], Any]] = [([], body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return path[:3] if path[:1] == ["instances"] else path
        if isinstance(value, dict):
            stack += [([*path, k], v) for k, v in reversed(value.items())]
        elif isinstance(value, list):
            stack += [([*path, i], v) for i, v in reversed(list(enumerate(value)))]
    return []


def _dotted(loc: list[Any]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return text or "the body"


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
