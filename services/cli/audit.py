"""Fairness audits: ``audit show`` (the verdict and each check; ``--open`` for the report)."""

from __future__ import annotations

import tempfile
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from services.cli.common import JsonOpt, TokenOpt, UrlOpt, _client, _fail, _out, audit_app, console
from services.client import CrucibleError


@audit_app.command("show")
def audit_show(
    job_id: str,
    open_report: Annotated[
        bool,
        typer.Option(
            "--open", help="Save the HTML report (plots, model card) and open it in a browser."
        ),
    ] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A job's fairness audit: the verdict and each check with its numbers."""
    client = _client(url, token)
    try:
        audit = client.audit(job_id)
        report = client.audit_report(job_id) if open_report else None
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(audit, True)
    else:
        for line in audit_lines(audit):
            console.print(line)
    if report is not None:
        path = Path(tempfile.gettempdir()) / f"crucible-audit-{job_id}.html"
        path.write_bytes(report)
        opened = webbrowser.open(path.as_uri())
        # To stderr: --json output stays one JSON document.
        Console(stderr=True).print(f"report: {path}" + ("" if opened else " (no browser found)"))


def audit_lines(audit: dict[str, Any]) -> list[str]:
    """The verdict, then each check as the audit worded it (rule, value, interval, groups)."""
    passed = audit.get("passed")
    verdict = "[green]passed[/]" if passed else "[red]failed[/]" if passed is False else "n/a"
    lines = [f"audit {verdict}"]
    for c in audit.get("checks", []):
        mark = "[green]ok[/]  " if c.get("passed") else "[red]FAIL[/]"
        lines.append(f"  {mark} {c.get('reason') or c.get('metric')}")
    return lines
