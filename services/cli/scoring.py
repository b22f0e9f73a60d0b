"""Batch scoring: ``score`` (with ``--follow``, its progress bar) and ``scoring
list/show/cancel/result``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.common import (
    JsonOpt,
    TokenOpt,
    UrlOpt,
    _client,
    _fail,
    _out,
    _run,
    _show,
    app,
    console,
    scoring_app,
)
from services.client import Crucible, CrucibleError


def follow_scoring(client: Crucible, run_id: str) -> dict[str, Any]:
    """A progress bar of rows scored, polled until the run ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        task = bar.add_task(f"{run_id} queued", total=None)

        def show(run: dict[str, Any]) -> None:
            p = run["progress"]
            bar.update(
                task,
                description=f"{run_id} {run['status']}",
                completed=p["rows_done"],
                total=p["rows_total"],
            )

        return client.wait_scoring(run_id, timeout=24 * 3600, on_poll=show)


def scoring_summary(run: dict[str, Any]) -> str:
    p = run["progress"]
    total = p["rows_total"] if p["rows_total"] is not None else "?"
    line = f"{run['id']}  {run['status']:<10} {p['rows_done']}/{total} rows"
    line += f"  model {run['model_id']}"
    if run.get("endpoint"):
        line += f" (endpoint {run['endpoint']})"
    if run.get("output_uri"):
        line += f"\n  result: {run['output_uri']}"
    if run.get("error"):
        line += f"\n  error: {run['error']}"
    return line


@app.command()
def score(
    target: Annotated[str, typer.Argument(help="An endpoint name (or a model id with --model)")],
    dataset_id: str,
    model: Annotated[
        bool, typer.Option("--model", help="TARGET is a model version id, not an endpoint")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(help="Actors predicting in parallel (default 2)")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per batch (default 1024)")] = None,
    passthrough: Annotated[
        list[str] | None,
        typer.Option("--passthrough", "-p", help="Input column to copy into the result (repeat)"),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Show progress until it ends")] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="With --follow: save the Parquet here")
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score every row of a registered dataset with an endpoint's live model (a Ray job)."""
    client = _client(url, token)
    call = client.score_model if model else client.score_endpoint
    try:
        run = call(target, dataset_id, concurrency, batch_size, passthrough)
    except CrucibleError as exc:
        _fail(exc)
    if not follow:
        if as_json:
            _out(run, True)
        else:
            console.print(f"scoring run {run['id']} queued; `crucible scoring show {run['id']}`")
        return
    try:
        final = follow_scoring(client, run["id"])
        if output is not None and final["status"] == "succeeded":
            client.scoring_result(run["id"], output)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(final, True)
    else:
        console.print(scoring_summary(final))
        if output is not None and final["status"] == "succeeded":
            console.print(f"  saved: {output}")
    raise typer.Exit(0 if final["status"] == "succeeded" else 1)


@scoring_app.command("list")
def scoring_list(
    status: str | None = None,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    _show(
        lambda: _client(url, token).scoring_runs(status),
        as_json,
        lambda items: [
            scoring_summary({**run, "output_uri": None, "error": None}) for run in items
        ],
    )


@scoring_app.command("show")
def scoring_show(
    run_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Status, rows scored, where the result is, and any error."""
    try:
        run = _client(url, token).scoring_run(run_id)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(run, True)
    else:
        console.print(scoring_summary(run))


@scoring_app.command("cancel")
def scoring_cancel(
    run_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    _run(lambda: _client(url, token).cancel_scoring(run_id), as_json)


@scoring_app.command("result")
def scoring_result(
    run_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to save the Parquet")],
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Download a finished run's result (Parquet: row, carried columns, prediction, ...)."""
    try:
        path = _client(url, token).scoring_result(run_id, output)
    except CrucibleError as exc:
        _fail(exc)
    console.print(f"saved {path}")
