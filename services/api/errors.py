"""Every error leaves the API as ``{"error", "detail", "fields"}`` with a fitting status."""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from services.core.errors import DomainError

log = logging.getLogger(__name__)


def error_body(
    kind: str, detail: str, fields: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": kind, "detail": detail, "fields": fields or []}


def _strip_body(loc: Any) -> list[Any]:
    loc = list(loc)
    return loc[1:] if loc and loc[0] == "body" else loc


def _allowed_methods(request: Request) -> list[str]:
    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    return [
        method
        for method in methods
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(_: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(
            {**error_body(exc.kind, exc.detail, exc.fields), **exc.extra()},
            status_code=exc.status_code,
            headers=exc.headers() or None,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"loc": _strip_body(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse(
            error_body("invalid", "the request is invalid", fields), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # RFC 9110: a 405 lists every method the path takes. Starlette names only the
            # first route matching the path (GET /v1/users, not also POST).
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse(
            error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(OperationalError)
    async def database_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc)
        return JSONResponse(
            error_body("unavailable", "the database is unavailable"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(OSError)
    async def storage_error(_: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc):
            # e.g. an upload while the artifact store is full: say so, not "internal error".
            log.error("artifact store full: %s", exc)
            return JSONResponse(
                error_body("insufficient_storage", "artifact store full: No space left on device"),
                status_code=507,
            )
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error"), status_code=500)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal", "internal error"), status_code=500)
