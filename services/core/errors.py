"""One hierarchy of domain errors; the API maps each to its status code in one handler."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    status_code = 400
    kind = "bad_request"

    def __init__(self, detail: str, fields: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or []

    def headers(self) -> dict[str, str]:
        """Response headers that go with the error."""
        return {"WWW-Authenticate": "Bearer"} if self.status_code == 401 else {}

    def extra(self) -> dict[str, Any]:
        """Members the error's body carries beside error, detail and fields."""
        return {}


class Unauthorized(DomainError):
    status_code = 401
    kind = "unauthorized"


class Forbidden(DomainError):
    """Authenticated, but the user's role does not allow it."""

    status_code = 403
    kind = "forbidden"


class NotFound(DomainError):
    status_code = 404
    kind = "not_found"


class Conflict(DomainError):
    status_code = 409
    kind = "conflict"


class PayloadTooLarge(DomainError):
    status_code = 413
    kind = "payload_too_large"


class Invalid(DomainError):
    status_code = 422
    kind = "invalid"


class TooManyRequests(DomainError):
    status_code = 429
    kind = "rate_limited"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class QuotaExceeded(DomainError):
    """The request would take a project past one of its quotas; it is refused, not queued."""

    status_code = 429
    kind = "quota_exceeded"

    def __init__(
        self, detail: str, quota: str, limit: float, in_use: float, requested: float
    ) -> None:
        super().__init__(detail)
        self.quota = {"name": quota, "limit": limit, "in_use": in_use, "requested": requested}

    def extra(self) -> dict[str, Any]:
        return {"quota": self.quota}


class Unavailable(DomainError):
    status_code = 503
    kind = "unavailable"

    def __init__(
        self,
        detail: str,
        fields: list[dict[str, Any]] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(detail, fields)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


class UpstreamFailed(DomainError):
    """Ray refused or failed what we asked of it."""

    status_code = 502
    kind = "upstream_failed"


class UnsupportedMediaType(DomainError):
    status_code = 415
    kind = "unsupported_media_type"
