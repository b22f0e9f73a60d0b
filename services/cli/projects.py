"""``projects list/show/create/quota/add-member/remove-member``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from services.cli.common import (
    JsonOpt,
    TokenOpt,
    UrlOpt,
    _client,
    _key_values,
    _show,
    projects_app,
)

QUOTA_HELP = (
    "A quota as key=value (repeat): max_concurrent_jobs, max_trials_per_job, max_cpus, "
    "max_gpus, max_storage_bytes; value null removes the limit."
)


def _quota_text(quotas: dict[str, Any]) -> str:
    set_ = [f"{k.removeprefix('max_')}={v:g}" for k, v in quotas.items() if v is not None]
    return ", ".join(set_) or "no quotas"


def _project_lines(p: dict[str, Any]) -> list[str]:
    lines = [f"{p['name']}  ({p['id']})  {_quota_text(p['quotas'])}"]
    if "usage" in p:
        u = p["usage"]
        lines.append(
            f"  in use: {u['concurrent_jobs']} job(s) queued or running, {u['cpus']:g} CPUs, "
            f"{u['gpus']:g} GPUs, {u['storage_bytes']} bytes of datasets"
        )
    if "members" in p:
        names = ", ".join(f"{m['name']} ({m['role']})" for m in p["members"]) or "none"
        lines.append(f"  members: {names}")
    return lines


@projects_app.command("list")
def projects_list(
    url: UrlOpt = "http://127.0.0.1:8080", token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Your projects (an admin: every project) and their quotas."""
    _show(
        lambda: _client(url, token).projects(),
        as_json,
        lambda items: [line for p in items for line in _project_lines(p)],
    )


@projects_app.command("show")
def projects_show(
    name: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A project's quotas, what it uses now, and its members."""
    _show(lambda: _client(url, token).project(name), as_json, _project_lines)


@projects_app.command("create")
def projects_create(
    name: str,
    quota: Annotated[list[str] | None, typer.Option("--quota", help=QUOTA_HELP)] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a project (admins), e.g. --quota max_concurrent_jobs=2 --quota max_gpus=4."""
    quotas = _key_values(quota or [], "--quota")
    _show(lambda: _client(url, token).create_project(name, **quotas), as_json, _project_lines)


@projects_app.command("quota")
def projects_quota(
    name: str,
    quota: Annotated[list[str], typer.Option("--quota", help=QUOTA_HELP)],
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change quotas (admins); those not named stay as they are."""
    quotas = _key_values(quota, "--quota")
    _show(lambda: _client(url, token).set_quotas(name, **quotas), as_json, _project_lines)


@projects_app.command("add-member")
def projects_add_member(
    name: str,
    user: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Let a user (id or name) see and work in the project (admins)."""
    _show(lambda: _client(url, token).add_member(name, user), as_json, _project_lines)


@projects_app.command("remove-member")
def projects_remove_member(
    name: str,
    user_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The user no longer sees the project; what they made there stays (admins)."""
    _show(lambda: _client(url, token).remove_member(name, user_id), as_json, _project_lines)
