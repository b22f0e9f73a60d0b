"""Identity: ``tokens create/list/revoke``, ``users create/list/update`` and ``audit-log``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from services.cli.common import (
    JsonOpt,
    TokenOpt,
    UrlOpt,
    _client,
    _fail,
    _out,
    _show,
    app,
    console,
    tokens_app,
    users_app,
)
from services.client import CrucibleError


def _token_line(t: dict[str, Any]) -> str:
    expires = t["expires_at"] or "never"
    used = t["last_used_at"] or "never"
    return (
        f"{t['id']}  {t['status']:<8} {t['name']:<20} user {t['user_id']}  "
        f"expires {expires}  last used {used}"
    )


@tokens_app.command("create")
def tokens_create(
    name: str,
    user: Annotated[
        str | None, typer.Option("--user", help="A user id (admins); default: yourself.")
    ] = None,
    expires_in_days: Annotated[int | None, typer.Option(help="Default: never.")] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token; its secret is printed this once and cannot be shown again."""
    try:
        made = _client(url, token).create_token(name, user, expires_in_days)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(made, True)
        return
    console.print(_token_line(made), highlight=False)
    console.print("Secret (shown once, only its hash is kept):", highlight=False)
    print(made["token"])


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option("--user", help="One user's (admins).")] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Your tokens (an admin: everyone's); never their secrets."""
    _show(
        lambda: _client(url, token).tokens(user),
        as_json,
        lambda items: [_token_line(t) for t in items],
    )


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token (yours; an admin: anyone's): refused from now on, serving included."""
    _show(lambda: _client(url, token).revoke_token(token_id), as_json, lambda t: [_token_line(t)])


class UserRole(StrEnum):
    viewer = "viewer"
    member = "member"
    approver = "approver"
    admin = "admin"


def _user_line(u: dict[str, Any]) -> str:
    state = f"disabled {u['disabled_at']}" if u["disabled_at"] else "enabled"
    return f"{u['id']}  {u['name']:<24} {u['role']:<9} {state}"


@users_app.command("create")
def users_create(
    name: str,
    role: Annotated[UserRole, typer.Option(help="What the user's tokens may do.")] = (
        UserRole.viewer
    ),
    project: Annotated[
        list[str] | None,
        typer.Option("--project", help="A project they work in (repeat); default: default."),
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a user (then give them a token: crucible tokens create NAME --user ID)."""
    _show(
        lambda: _client(url, token).create_user(name, role.value, project or None),
        as_json,
        lambda u: [f"{_user_line(u)}  projects {', '.join(u['projects']) or '-'}"],
    )


@users_app.command("list")
def users_list(
    url: UrlOpt = "http://127.0.0.1:8080", token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    _show(
        lambda: _client(url, token).users(), as_json, lambda items: [_user_line(u) for u in items]
    )


@users_app.command("update")
def users_update(
    user_id: str,
    role: Annotated[UserRole | None, typer.Option()] = None,
    disabled: Annotated[
        bool | None,
        typer.Option("--disable/--enable", help="Disabling stops all the user's tokens."),
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role, or disable (enable) them."""
    _show(
        lambda: _client(url, token).update_user(user_id, role.value if role else None, disabled),
        as_json,
        lambda u: [_user_line(u)],
    )


@app.command("audit-log")
def audit_log(
    actor: Annotated[str | None, typer.Option(help="A user's id or name.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 time with a zone.")] = None,
    limit: int = 100,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """State-changing requests, newest first (admins)."""
    try:
        items = _client(url, token).audit_log(actor, since, limit)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for e in items:
        console.print(
            f"{e['ts']}  {e['status']}  {e['method']:<6} {e['path']}  "
            f"{e['actor_name'] or '-'}  {e['client_ip'] or '-'}  {e['request_id']}",
            highlight=False,
        )
