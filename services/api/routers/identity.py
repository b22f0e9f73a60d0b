"""Users, API tokens, and the audit log.

Any user manages their own tokens (a viewer too); an admin manages users, everyone's tokens,
and reads the audit log.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Query, Request, status
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from jobs.text import Label
from services.api.deps import MAX_ID, Admin, ServicesDep, Viewer
from services.api.openapi import errors
from services.api.serving_sync import resync_serving
from services.core import tokens as token_service
from services.core.errors import Invalid
from services.core.projects import DEFAULT_PROJECT, names_of
from services.core.tokens import MAX_TOKEN_DAYS, USER_NAME_PATTERN
from services.store.repositories import AuditLogRepository, TokenRepository, UserRepository

router = APIRouter(prefix="/v1", tags=["identity"])
log = logging.getLogger(__name__)

Role = Literal["viewer", "member", "approver", "admin"]


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=USER_NAME_PATTERN, description="Unique; e-mail addresses fit.")
    role: Role = Field(
        "viewer",
        description="viewer: read; member: submit and cancel jobs, upload datasets, audits, "
        "feedback, batch scoring; approver: also promote (canaries included), roll back and "
        "override gates; admin: also users, everyone's tokens and the audit log.",
    )
    projects: list[str] = Field(
        default_factory=lambda: [DEFAULT_PROJECT],
        max_length=100,
        description="Names of the projects the user sees and works in (an admin sees all).",
    )


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Role | None = None
    disabled: bool | None = Field(
        None, description="true: every token of the user stops working at once."
    )


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Label = Field(min_length=1, max_length=100, description="What the token is for.")
    user_id: str | None = Field(
        None, description="Whose token: yourself by default; another user's needs admin."
    )
    expires_in_days: int | None = Field(
        None, ge=1, le=MAX_TOKEN_DAYS, description="None: it never expires."
    )


@router.get("/me")
def me(services: ServicesDep, caller: Viewer) -> dict[str, Any]:
    """The caller: their user, the token they used, and the projects they see (an admin:
    every project)."""
    with services.db.session() as s:
        user = UserRepository(s).get(caller.user_id)
        token = TokenRepository(s).get(caller.token_id)
        assert user is not None and token is not None
        return {
            **token_service.user_view(user),
            "token": token_service.token_view(token),
            "projects": names_of(s, caller.projects),
        }


@router.post("/users", status_code=status.HTTP_201_CREATED, responses=errors(409))
def create_user(body: NewUser, services: ServicesDep, _: Admin) -> dict[str, Any]:
    """A new user without tokens: create one with POST /v1/tokens and its ``user_id``."""
    return token_service.create_user(services.db, body.name, body.role, body.projects)


@router.get("/users")
def list_users(services: ServicesDep, _: Admin) -> dict[str, Any]:
    return {"items": token_service.list_users(services.db)}


@router.patch("/users/{user_id}", responses=errors(409))
def update_user(
    user_id: str,
    body: UserChange,
    request: Request,
    services: ServicesDep,
    background: BackgroundTasks,
    _: Admin,
) -> dict[str, Any]:
    """Change a user's role, or disable (enable) them; 409 for the last enabled admin."""
    view, changed = token_service.update_user(services.db, user_id, body.role, body.disabled)
    if changed:
        background.add_task(resync_serving, request, services)
    return view


@router.post("/tokens", status_code=status.HTTP_201_CREATED, responses=errors(409))
def create_token(
    body: NewToken,
    request: Request,
    services: ServicesDep,
    background: BackgroundTasks,
    caller: Viewer,
) -> dict[str, Any]:
    """A new token; ``token`` in the answer is its secret, shown this once and stored only
    as a hash. Serving endpoints take it once their config is pushed again, right after this
    answer."""
    made = token_service.create_token(
        services.db, caller, body.name, body.user_id, body.expires_in_days
    )
    background.add_task(resync_serving, request, services)
    return made


@router.get("/tokens")
def list_tokens(
    services: ServicesDep,
    caller: Viewer,
    user_id: Annotated[str | None, Query(description="One user's (admins only).")] = None,
) -> dict[str, Any]:
    """Your tokens (an admin: everyone's), without their secrets or hashes."""
    return {"items": token_service.list_tokens(services.db, caller, user_id)}


@router.delete("/tokens/{token_id}")
def revoke_token(
    token_id: str,
    request: Request,
    services: ServicesDep,
    background: BackgroundTasks,
    caller: Viewer,
) -> dict[str, Any]:
    """Revoke a token: it is refused from now on, by the API at once and by serving
    endpoints once their config is pushed again (right after this answer)."""
    view, changed = token_service.revoke_token(services.db, caller, token_id)
    if changed:
        background.add_task(resync_serving, request, services)
    return view


def _not_a_number(value: Any) -> Any:
    """A time in ISO 8601 only: pydantic alone takes a number as seconds since 1970 (in UTC,
    so a zone the caller never gave)."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("an ISO 8601 time with a zone, e.g. 2026-01-31T00:00:00Z, not a number")
    return value


@router.get("/audit-log")
def audit_log(
    services: ServicesDep,
    _: Admin,
    actor: Annotated[str | None, Query(description="A user's id or name.")] = None,
    since: Annotated[
        datetime | None, BeforeValidator(_not_a_number), Query(description="ISO 8601, with a zone.")
    ] = None,
    before: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Entries older than this id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """State-changing requests, newest first: who (user, token), what (method, path, route,
    resource), when, from where (client address), the status code and the request id."""
    if since is not None and since.tzinfo is None:
        raise Invalid(
            "since needs a time zone",
            [{"loc": ["query", "since"], "msg": "add a zone, e.g. Z or +00:00"}],
        )
    with services.db.session() as s:
        rows = AuditLogRepository(s).list(actor, since, before, limit)
        return {
            "items": [
                {
                    "id": r.id,
                    "ts": r.ts.isoformat(),
                    "actor_id": r.actor_id,
                    "actor_name": r.actor_name,
                    "token_id": r.token_id,
                    "method": r.method,
                    "path": r.path,
                    "route": r.route,
                    "resource_id": r.resource_id,
                    "status": r.status,
                    "client_ip": r.client_ip,
                    "request_id": r.request_id,
                }
                for r in rows
            ]
        }
