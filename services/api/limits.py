"""Request limits: the size of a request body, and a rate limit per token.

Both answer before any work is done: an oversized body is refused from its Content-Length
(or as soon as the bytes received pass the limit), never spooled to disk first; a token over
its rate gets 429 with ``Retry-After`` before the route runs.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_body
from services.core.errors import PayloadTooLarge, TooManyRequests

# Multipart framing around an upload's file: boundaries, part headers, the name field.
MULTIPART_OVERHEAD = 1024 * 1024
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per API token, in this process's memory: ``per_minute`` requests a
    minute on average, in bursts of up to ``per_minute``. Several API processes each allow
    that much (the limit is per process, not global)."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one request from ``key``'s bucket, or raise 429 saying when one is back."""
        if self.rate <= 0:
            return  # 0: no limit
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = _Bucket(self.capacity, now)
            b.tokens = min(self.capacity, b.tokens + (now - b.at) * self.rate)
            b.at = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return
            wait = math.ceil((1.0 - b.tokens) / self.rate)
        raise TooManyRequests(
            f"rate limit of {self.capacity:.0f} requests a minute per token exceeded; "
            f"retry after {wait} s",
            retry_after_s=max(1, wait),
        )


class BodyLimitMiddleware:
    """413 for request bodies over the limit: ``max_body`` for every body but a multipart
    upload, which may carry ``max_upload`` bytes of file (plus its framing), and the cluster's
    own calls (/v1/internal: a job's result carries its whole evaluation and audit), which
    may carry ``max_internal``."""

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int, max_internal: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.max_internal = max_internal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").lower().startswith("multipart/form-data")
        if scope["path"].startswith("/v1/internal/"):
            limit = self.max_internal
        else:
            limit = self.max_upload + MULTIPART_OVERHEAD if multipart else self.max_body
        what = "an upload" if multipart else "a request body"
        detail = f"{what} is at most {limit} bytes"
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, detail)
            return
        if multipart:
            # Too big to hold in memory: count while the route's form parser reads, and stop
            # it there (the error may come back wrapped in an ExceptionGroup by a middleware's
            # task group in between).
            received = 0
            started = False

            async def counted() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _TooLarge
                return message

            async def watched(message: Message) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await self.app(scope, counted, watched)
            except Exception as exc:
                if started or not _only_too_large(exc):
                    raise
                await _too_large(send, detail)
            return
        # Small enough to read here whole: refused before the route starts, then replayed.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(b"", message, receive), send)
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _too_large(send, detail)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), None, receive), send)


class _TooLarge(Exception):
    """Raised from ``receive`` when an upload passes its limit."""


def _only_too_large(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_too_large(e) for e in exc.exceptions)
    return isinstance(exc, _TooLarge)


def _replay(body: bytes, first: Message | None, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first or {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _too_large(send: Send, detail: str) -> None:
    payload = json.dumps(error_body(PayloadTooLarge.kind, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": PayloadTooLarge.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
