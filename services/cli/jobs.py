"""Datasets and jobs: ``datasets upload/list``, ``submit`` (with ``--follow``, its progress
view) and ``jobs list/show/cancel/logs/resume/report``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from services.cli.common import (
    JsonOpt,
    ProjectOpt,
    TokenOpt,
    UrlOpt,
    _client,
    _fail,
    _out,
    _run,
    _show,
    app,
    console,
    datasets_app,
    jobs_app,
)
from services.client import CrucibleError


@datasets_app.command("upload")
def datasets_upload(
    path: Path,
    name: str,
    project: ProjectOpt = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a CSV or Parquet file."""
    _run(lambda: _client(url, token).upload_dataset(path, name, project), as_json)


@datasets_app.command("list")
def datasets_list(
    url: UrlOpt = "http://127.0.0.1:8080", token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    _show(
        lambda: _client(url, token).datasets(),
        as_json,
        lambda items: [
            f"{d['id']}  {d['name']}  {d['num_rows']} rows  {len(d['columns'])} columns"
            for d in items
        ],
    )


def _load_spec(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        console.print(f"[red]Cannot read the spec {path}:[/] {exc}")
        raise typer.Exit(2) from None
    if not isinstance(data, dict):
        console.print(f"[red]{path} does not hold a spec object[/]")
        raise typer.Exit(2)
    return data


@app.command()
def submit(
    spec: Path,
    follow: Annotated[bool, typer.Option("--follow")] = False,
    project: ProjectOpt = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job spec (YAML or JSON); --follow prints progress until it ends."""
    client = _client(url, token)
    body = _load_spec(spec)
    if project is not None:
        body["project"] = project
    try:
        job = client.submit_job(body)
    except CrucibleError as exc:
        _fail(exc)
    if not follow:
        _out(job, as_json)
        return
    from services.progress import follow as follow_job

    console.print(f"job {job['id']} queued")
    final = follow_job(client, job["id"], console)
    _out(final, as_json)
    raise typer.Exit(0 if final["status"] == "succeeded" else 1)


@jobs_app.command("list")
def jobs_list(
    status: str | None = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    _show(
        lambda: _client(url, token).jobs(status),
        as_json,
        lambda items: [f"{j['id']}  {j['status']:<10} {j['name']}" for j in items],
    )


@jobs_app.command("show")
def jobs_show(
    job_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    _run(lambda: _client(url, token).job(job_id), as_json)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    _run(lambda: _client(url, token).cancel(job_id), as_json)


@jobs_app.command("logs")
def jobs_logs(
    job_id: str,
    tail: Annotated[int, typer.Option(help="Last characters to show")] = 20_000,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """The end of the job driver's output."""
    try:
        text = _client(url, token).logs(job_id, tail)
    except CrucibleError as exc:
        _fail(exc)
    sys.stdout.write(text)


@jobs_app.command("resume")
def jobs_resume(
    job_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Relaunch a job whose driver was lost; the search goes on from storage."""
    _run(lambda: _client(url, token).resume(job_id), as_json)


@jobs_app.command("report")
def jobs_report(
    job_id: str,
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write")] = Path("audit.html"),
    pdf: Annotated[
        bool, typer.Option("--pdf", help="A PDF (needs Chromium on the API host)")
    ] = False,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Save the job's audit report: one self-contained HTML page (or --pdf)."""
    try:
        data = _client(url, token).audit_report(job_id, "pdf" if pdf else "html")
    except CrucibleError as exc:
        _fail(exc)
    out.write_bytes(data)
    console.print(f"wrote {out} ({len(data)} bytes)")
