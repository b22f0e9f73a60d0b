"""What every ``crucible`` command shares: the Typer app and its command groups, the console,
the options each API command takes, and the calls that reach the API and print its answer.

The command modules (``stack``, ``jobs``, ``serving``, ``audit``, ``scoring``, ``identity``) add
their commands to the apps defined here; ``services/cli/__init__.py`` imports them all."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from services.client import Crucible, CrucibleError

app = typer.Typer(
    help="Crucible: hyperparameter search on Ray, audited, promoted, served.", no_args_is_help=True
)
datasets_app = typer.Typer(help="Register and list datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect and control jobs.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
endpoints_app = typer.Typer(
    help="Serving endpoints: list, show, monitoring, events.", no_args_is_help=True
)
app.add_typer(endpoints_app, name="endpoints")
audit_app = typer.Typer(help="Fairness audits of jobs' models.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
scoring_app = typer.Typer(
    help="Batch scoring runs: list, show, cancel, result.", no_args_is_help=True
)
app.add_typer(scoring_app, name="scoring")
# Identity: database, users, tokens (the audit log is a top-level command). Every group is made
# here, in this order, so `crucible --help` lists them as it always has.
db_app = typer.Typer(help="The control plane's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
tokens_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
users_app = typer.Typer(help="Users and their roles (admins).", no_args_is_help=True)
app.add_typer(users_app, name="users")
projects_app = typer.Typer(
    help="Projects: who sees what, and quotas (changes: admins).", no_args_is_help=True
)
app.add_typer(projects_app, name="projects")
console = Console()

DEFAULT_DATA_DIR = Path.home() / ".crucible"
UrlOpt = Annotated[str, typer.Option(envvar="CRUCIBLE_URL", help="API base URL.")]
TokenOpt = Annotated[
    str | None, typer.Option(envvar="CRUCIBLE_TOKEN", help="API token (default: <data-dir>/token).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[
    str | None,
    typer.Option(help="The project it goes into; default: your only one (an admin's: default)."),
]


def _client(url: str, token: str | None) -> Crucible:
    if token is None:
        path = Path(os.environ.get("CRUCIBLE_DATA_DIR", DEFAULT_DATA_DIR)) / "token"
        if not path.exists():
            console.print(
                "[red]No token:[/] pass --token, set CRUCIBLE_TOKEN, "
                f"or run `crucible up` (which writes {path})."
            )
            raise typer.Exit(2)
        token = path.read_text().strip()
    return Crucible(url, token)


def _out(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print_json(json.dumps(data))


def _fail(exc: CrucibleError) -> NoReturn:
    console.print(f"[red]{exc}[/]")
    raise typer.Exit(1 if exc.status >= 500 else 2)


def _run(call: Callable[[], Any], as_json: bool) -> None:
    """Call the API and show the answer; an error answer exits with its message."""
    try:
        result = call()
    except CrucibleError as exc:
        _fail(exc)
    _out(result, as_json)


def _show(call: Callable[[], Any], as_json: bool, lines: Callable[[Any], Iterable[str]]) -> None:
    """Call the API; print the answer as JSON with --json, else as ``lines`` make it."""
    try:
        result = call()
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(result, True)
        return
    for line in lines(result):
        console.print(line, highlight=False)


def _key_values(items: list[str], option: str) -> dict[str, Any]:
    """``key=value`` pairs, values read as JSON where they parse (numbers, true/false)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{item}' is not key=value", param_hint=option)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out
