"""The audit log: every state-changing request under /v1 (not /v1/internal), with who made it,
from where, what it touched and how it ended; refused requests (4xx) included.

A middleware, so no route can forget it. The row is written before the response's last
bytes go out: a client that saw the answer can rely on the row being there.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.limits import BODY_METHODS
from services.core.auth import Principal, principal_for
from services.store.db import Database
from services.store.models import AuditLogEntry
from services.store.repositories import AuditLogRepository

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# A caller's own request id is kept when it is this tame; anything else gets a fresh one.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Enough of a response to find the id of what a POST created.
_BODY_PEEK = 64 * 1024


def audited(method: str, path: str) -> bool:
    return (
        method in BODY_METHODS and path.startswith("/v1/") and not path.startswith("/v1/internal/")
    )


class AuditLogMiddleware:
    """Also gives every response an ``X-Request-ID`` (the caller's, when it sent a tame one),
    which the audit row carries too."""

    def __init__(self, app: ASGIApp, db: Database) -> None:
        self.app = app
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = headers.get(REQUEST_ID_HEADER, "")
        if not _REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        rid_header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        if not audited(scope["method"], scope["path"]):

            async def tag(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), rid_header]
                await send(message)

            await self.app(scope, receive, tag)
            return

        status: int | None = None
        peek = bytearray()

        async def audited_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), rid_header]
            elif message["type"] == "http.response.body":
                if len(peek) < _BODY_PEEK:
                    peek.extend(message.get("body", b"")[: _BODY_PEEK - len(peek)])
                if not message.get("more_body", False):
                    await self._record(scope, headers, request_id, status or 500, bytes(peek))
            await send(message)

        try:
            await self.app(scope, receive, audited_send)
        except Exception:
            if status is None:  # the server answers 500 for it
                await self._record(scope, headers, request_id, 500, b"")
            raise

    async def _record(
        self, scope: Scope, headers: Headers, request_id: str, status: int, body: bytes
    ) -> None:
        principal = scope.get("state", {}).get("principal")
        route = scope.get("route")
        client = scope.get("client")
        entry = AuditLogEntry(
            method=scope["method"],
            path=scope["path"][:2000],
            route=getattr(route, "path", None),
            resource_id=_resource_id(scope, status, body),
            status=status,
            client_ip=client[0][:64] if client else None,
            request_id=request_id,
        )
        try:
            await anyio.to_thread.run_sync(
                self._write, entry, principal, headers.get("authorization")
            )
        except Exception:
            # The request's outcome stands; a lost row is logged loudly instead.
            log.exception(
                "audit log write failed: %s %s -> %s (request %s)",
                entry.method,
                entry.path,
                status,
                request_id,
            )

    def _write(
        self, entry: AuditLogEntry, principal: Principal | None, authorization: str | None
    ) -> None:
        if principal is None and authorization:
            # Refused before authentication ran (e.g. 413): still name whose token it was.
            principal = principal_for(self.db, authorization)
        if principal is not None:
            entry.actor_id, entry.actor_name = principal.user_id, principal.name
            entry.token_id = principal.token_id
        with self.db.session() as s:
            AuditLogRepository(s).append(entry)


def _resource_id(scope: Scope, status: int, body: bytes) -> str | None:
    """The path's resource (its first path parameter), else the id of what was created."""
    params: dict[str, Any] = scope.get("path_params") or {}
    for value in params.values():
        return str(value)[:200]
    if 200 <= status < 300 and body:
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        if isinstance(doc, dict) and isinstance(doc.get("id"), str | int):
            return str(doc["id"])[:200]
    return None
