"""The ``crucible`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console

from services.client import Crucible, CrucibleError

app = typer.Typer(
    help="Crucible: hyperparameter search on Ray, audited, promoted, served.", no_args_is_help=True
)
datasets_app = typer.Typer(help="Register and list datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect and control jobs.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
endpoints_app = typer.Typer(help="Serving endpoints: list, show.", no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")
console = Console()

DEFAULT_DATA_DIR = Path.home() / ".crucible"
UrlOpt = Annotated[str, typer.Option(envvar="CRUCIBLE_URL", help="API base URL.")]
TokenOpt = Annotated[
    str | None, typer.Option(envvar="CRUCIBLE_TOKEN", help="API token (default: <data-dir>/token).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


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


@app.command()
def up(
    port: Annotated[int, typer.Option(envvar="CRUCIBLE_PORT")] = 8080,
    data_dir: Annotated[Path, typer.Option(envvar="CRUCIBLE_DATA_DIR")] = DEFAULT_DATA_DIR,
    ray_port: Annotated[int, typer.Option(envvar="CRUCIBLE_RAY_GCS_PORT")] = 6380,
    dashboard_port: Annotated[int, typer.Option(envvar="CRUCIBLE_RAY_DASHBOARD_PORT")] = 8265,
    serve_port: Annotated[int, typer.Option(envvar="CRUCIBLE_SERVE_PORT")] = 8000,
    client_server_port: int = 10001,
    agent_port: int = 52365,
    num_cpus: int | None = None,
) -> None:
    """Start a local Ray head and the API (SQLite and artifacts under --data-dir)."""
    from services.stack import LocalStack, StackConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stack = LocalStack(
        StackConfig(
            data_dir=data_dir.expanduser(),
            port=port,
            ray_port=ray_port,
            dashboard_port=dashboard_port,
            serve_port=serve_port,
            client_server_port=client_server_port,
            agent_port=agent_port,
            num_cpus=num_cpus,
            ray_address=os.environ.get("RAY_ADDRESS") or None,
        )
    )
    console.print(f"Starting Crucible (data in {data_dir}) ...")
    try:
        stack.start()
    except KeyboardInterrupt:  # Ctrl-C while starting: start() has stopped what it started
        raise typer.Exit(0) from None
    console.print(
        f"[bold green]Crucible is up[/]: API {stack.cfg.api_url}, "
        f"Ray dashboard {stack.cfg.dashboard_url}; admin token in "
        f"{data_dir / 'token'} (or CRUCIBLE_BOOTSTRAP_TOKEN). Ctrl-C stops it."
    )
    raise typer.Exit(stack.supervise())


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Default: CRUCIBLE_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Default: CRUCIBLE_PORT or 8080")] = None,
) -> None:
    """Run the API server alone (Ray elsewhere: CRUCIBLE_RAY_DASHBOARD_URL / RAY_ADDRESS)."""
    import uvicorn

    from services.api.app import create_app
    from services.config import Settings

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One line per call to Ray's dashboard would drown what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


@app.command()
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the demo stack keeps its data (default: a new temporary folder)"),
    ] = None,
    port: int = 8080,
) -> None:
    """Run the whole flow on the built-in Adult dataset, then stop."""
    from services.demo import run_demo
    from services.stack import LocalStack, StackConfig

    folder = data_dir or Path(tempfile.mkdtemp(prefix="crucible-demo-"))
    t0 = time.monotonic()
    stack = LocalStack(StackConfig(data_dir=folder, port=port))
    console.print(f"Starting a local stack (Ray head + API on :{port}, data in {folder}) ...")
    stack.start()
    try:
        console.print(f"Stack ready in {time.monotonic() - t0:.0f}s")
        token = (folder / "token").read_text().strip()
        with Crucible(stack.cfg.api_url, token) as client:
            code = run_demo(client, console)
    finally:
        console.print("Stopping the stack ...")
        stack.stop()
    console.print(f"Total {time.monotonic() - t0:.0f}s")
    raise typer.Exit(code)


@datasets_app.command("upload")
def datasets_upload(
    path: Path,
    name: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a CSV or Parquet file."""
    _run(lambda: _client(url, token).upload_dataset(path, name), as_json)


@datasets_app.command("list")
def datasets_list(
    url: UrlOpt = "http://127.0.0.1:8080", token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    try:
        items = _client(url, token).datasets()
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for d in items:
        console.print(f"{d['id']}  {d['name']}  {d['num_rows']} rows  {len(d['columns'])} columns")


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
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a job spec (YAML or JSON); --follow prints progress until it ends."""
    client = _client(url, token)
    try:
        job = client.submit_job(_load_spec(spec))
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
    try:
        items = _client(url, token).jobs(status)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for j in items:
        console.print(f"{j['id']}  {j['status']:<10} {j['name']}")


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


@endpoints_app.command("list")
def endpoints_list(
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    try:
        items = _client(url, token).endpoints()
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for e in items:
        console.print(f"{e['name']:<24} {e.get('model_id', '')}  {e.get('url', '')}")


@endpoints_app.command("show")
def endpoints_show(
    name: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The endpoint's current version and its promotion history."""
    _run(lambda: _client(url, token).endpoint(name), as_json)


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


@app.command()
def promote(
    job_id: str,
    endpoint: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    override: Annotated[
        str | None,
        typer.Option(help="Promote even if the spec's gates fail, for this written reason."),
    ] = None,
    mitigated: Annotated[
        bool,
        typer.Option(help="Promote the job's fairness-mitigated candidate (audit.mitigation)."),
    ] = False,
) -> None:
    """Serve a succeeded job's best model at an endpoint, if it passes the spec's gates."""
    candidate = "mitigated" if mitigated else "best"
    _run(lambda: _client(url, token).promote(job_id, endpoint, override, candidate), as_json)


@app.command()
def rollback(
    endpoint: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve the version an endpoint served before its current one."""
    _run(lambda: _client(url, token).rollback(endpoint), as_json)


@app.command()
def predict(
    endpoint_url: str,
    instances: Annotated[str, typer.Argument(help="JSON list of objects, or @file.json")],
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Ask an endpoint for predictions."""
    raw = Path(instances[1:]).read_text() if instances.startswith("@") else instances
    try:
        _out(_client(url, token).predict(endpoint_url, json.loads(raw)), True)
    except CrucibleError as exc:
        _fail(exc)


if __name__ == "__main__":
    sys.exit(app())
