"""The ``crucible`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import webbrowser
from collections.abc import Callable
from enum import StrEnum
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
console = Console()

DEFAULT_DATA_DIR = Path.home() / ".crucible"
UrlOpt = Annotated[str, typer.Option(envvar="CRUCIBLE_URL", help="API base URL.")]
TokenOpt = Annotated[
    str | None, typer.Option(envvar="CRUCIBLE_TOKEN", help="API token (default: <data-dir>/token).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class PromoteCandidate(StrEnum):
    """Which of a job's models a promotion serves."""

    best = "best"
    mitigated = "mitigated"
    compressed = "compressed"


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
    from services.stack import LocalStack, PortBusy, StackConfig

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
    except PortBusy as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
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
    from services.stack import LocalStack, PortBusy, StackConfig

    folder = data_dir or Path(tempfile.mkdtemp(prefix="crucible-demo-"))
    t0 = time.monotonic()
    stack = LocalStack(StackConfig(data_dir=folder, port=port))
    console.print(f"Starting a local stack (Ray head + API on :{port}, data in {folder}) ...")
    try:
        stack.start()
    except PortBusy as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
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


@endpoints_app.command("monitoring")
def endpoints_monitoring(
    name: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Live figures over the endpoint's recent logged predictions, per model version: latency,
    predictions, live accuracy and fairness (with feedback labels), drift per feature, alert."""
    try:
        fig = _client(url, token).monitoring(name)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(fig, True)
        return
    for line in monitoring_lines(fig):
        console.print(line, highlight=False)


def _num(x: Any, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def monitoring_lines(fig: dict[str, Any]) -> list[str]:
    """The monitoring figures as the lines ``crucible endpoints monitoring`` prints."""
    alert = f"[red]ALERT: {fig['alert']}[/]" if fig["alert"] else "[green]no alert[/]"
    lines = [
        f"[bold]{fig['endpoint']}[/]  {alert}  {fig['logged']} logged predictions in the "
        f"window (of {fig['window']}); drift threshold {fig['drift_threshold']}"
    ]
    if fig.get("canary"):
        c = fig["canary"]
        lines.append(f"canary: {c['model_id']} at {c['percent']}%")
    for m in fig["models"]:
        share = "" if m["share"] is None else f" ({m['share']:.0%})"
        lines.append(f"\n[bold]{m['model_id']}[/]  {m['requests']} requests{share}")
        lat = m["latency_ms"]
        if lat:
            lines.append(
                f"  latency ms  p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}"
            )
        counts = m["predictions"].get("counts")
        if counts:
            lines.append("  predictions " + "  ".join(f"{k}: {v}" for k, v in counts.items()))
        elif m["predictions"].get("count"):
            p = m["predictions"]
            lines.append(
                f"  predictions mean {p['mean']:.4g}  p5 {p['p5']:.4g}  p95 {p['p95']:.4g}"
            )
        if m["mean_absolute_error"] is not None:
            lines.append(f"  live MAE {m['mean_absolute_error']:.4g} ({m['labelled']} labelled)")
        else:
            lines.append(f"  live accuracy {_num(m['accuracy'])} ({m['labelled']} labelled)")
        for feature, f in m["fairness"].items():
            groups = "  ".join(
                f"{g}: n={v['count']} sel={_num(v['selection_rate'])} acc={_num(v['accuracy'])}"
                for g, v in f["groups"].items()
            )
            lines.append(
                f"  fairness {feature}: DP diff {_num(f['demographic_parity_difference'])}, "
                f"DP ratio {_num(f['demographic_parity_ratio'])}, "
                f"EO diff {_num(f['equalized_odds_difference'])}"
            )
            lines.append(f"    {groups}")
        d = m["drift"]
        lines.append(f"  drift: {d['status']} ({d['rows']} rows, judged from {d['min_rows']})")
        for feature, v in sorted(d["features"].items(), key=lambda kv: -(kv[1]["psi"] or 0)):
            flag = " [red]drifted[/]" if v["drifted"] else ""
            lines.append(f"    {feature:<24} PSI {_num(v['psi'], '.4f')}{flag}")
    return lines


@endpoints_app.command("events")
def endpoints_events(
    name: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The endpoint's monitoring events: drift alerts raised and cleared."""
    try:
        items = _client(url, token).endpoint_events(name, limit=1000)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for ev in items:
        features = ", ".join(f"{k} {v:.3f}" for k, v in ev["data"].get("features", {}).items())
        console.print(f"{ev['at']}  {ev['type']:<20} {features}", highlight=False)


def feedback_items(path: Path) -> list[dict[str, Any]]:
    """Feedback items from a JSON Lines file (one object a line) or a CSV file with a header
    (``request_id``, ``label``, optional ``index``). CSV labels stay text: "1" matches a
    prediction of 1."""
    import csv

    items: list[dict[str, Any]] = []
    with path.open(newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            missing = {"request_id", "label"} - set(reader.fieldnames or [])
            if missing:
                raise typer.BadParameter(f"{path}: no column {sorted(missing)}", param_hint="FILE")
            for line, row in enumerate(reader, start=2):
                item: dict[str, Any] = {"request_id": row["request_id"], "label": row["label"]}
                if row.get("index") not in (None, ""):
                    try:
                        item["index"] = int(row["index"])
                    except ValueError:
                        raise typer.BadParameter(
                            f"{path} line {line}: index {row['index']!r} is not an integer",
                            param_hint="FILE",
                        ) from None
                items.append(item)
            return items
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"{path} line {line}: {exc}", param_hint="FILE") from None
            if not isinstance(obj, dict):
                raise typer.BadParameter(
                    f"{path} line {line}: not a JSON object", param_hint="FILE"
                )
            items.append(obj)
    return items


@app.command()
def feedback(
    endpoint: str,
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="JSON Lines ({request_id, index?, label} a line) or CSV (request_id, label, "
            "index?)",
        ),
    ],
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send ground-truth labels of an endpoint's predictions, by request id: live accuracy
    and fairness follow (crucible endpoints monitoring)."""
    items = feedback_items(file)
    if not items:
        raise typer.BadParameter(f"{file} holds no feedback", param_hint="FILE")
    try:
        out = _client(url, token).feedback(endpoint, items)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(out, True)
    else:
        console.print(
            f"{out['matched']} labels matched logged predictions, {out['unmatched']} did not "
            "(not sampled for logging, or unknown)"
        )


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
    candidate: Annotated[
        PromoteCandidate | None,
        typer.Option(
            help="best: the search's best model; mitigated: its fairness-mitigated variant "
            "(audit.mitigation); compressed: its pruned/int8 variant (promotion.compress, "
            "promotion.prune). Default: compressed when the spec asked for it, else best."
        ),
    ] = None,
    mitigated: Annotated[
        bool,
        typer.Option(help="Same as --candidate mitigated."),
    ] = False,
    traffic: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=100,
            help="Percent of the endpoint's requests for this model: below 100 a canary beside "
            "the version serving now.",
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option(help="All requests to this model (completes a canary of it)."),
    ] = False,
    serving: Annotated[
        list[str] | None,
        typer.Option(
            help="key=value overrides of the spec's promotion.serving, e.g. max_replicas=3 "
            "max_batch_size=16 (repeatable)."
        ),
    ] = None,
) -> None:
    """Serve a succeeded job's model at an endpoint, if it passes the spec's gates."""
    if full and traffic not in (None, 100):
        raise typer.BadParameter(f"disagrees with --traffic {traffic}", param_hint="--full")
    overrides = _key_values(serving or [], "--serving")
    chosen = candidate.value if candidate is not None else None
    if mitigated:
        if chosen not in (None, "mitigated"):
            raise typer.BadParameter(
                f"disagrees with --candidate {chosen}", param_hint="--mitigated"
            )
        chosen = "mitigated"
    _run(
        lambda: _client(url, token).promote(
            job_id, endpoint, override, chosen, traffic or 100, overrides
        ),
        as_json,
    )


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


@app.command()
@endpoints_app.command("rollback")
def rollback(
    endpoint: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve the version an endpoint served before its current one (during a canary: all
    requests back to the version it runs beside). Also `crucible endpoints rollback`."""
    _run(lambda: _client(url, token).rollback(endpoint), as_json)


@app.command()
def predict(
    endpoint: Annotated[str, typer.Argument(help="An endpoint's name, or its full URL")],
    instances: Annotated[str, typer.Argument(help="JSON list of objects, or @file.json")],
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
) -> None:
    """Ask an endpoint for predictions (the answer is printed as JSON)."""
    try:
        raw = Path(instances[1:]).read_text() if instances.startswith("@") else instances
        rows = json.loads(raw)
    except (OSError, ValueError) as exc:
        console.print(f"[red]Cannot read the instances:[/] {exc}")
        raise typer.Exit(2) from None
    client = _client(url, token)
    try:
        target = endpoint if "://" in endpoint else client.endpoint(endpoint)["url"]
        _out(client.predict(target, rows), True)
    except CrucibleError as exc:
        _fail(exc)


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
    try:
        items = _client(url, token).scoring_runs(status)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for run in items:
        console.print(scoring_summary({**run, "output_uri": None, "error": None}))


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


# --- identity: database, users, tokens, audit log ----------------------------------------------

db_app = typer.Typer(help="The control plane's database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
tokens_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
users_app = typer.Typer(help="Users and their roles (admins).", no_args_is_help=True)
app.add_typer(users_app, name="users")


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[Path, typer.Option(envvar="CRUCIBLE_DATA_DIR")] = DEFAULT_DATA_DIR,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="CRUCIBLE_DATABASE_URL", help="Default: SQLite in --data-dir."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring the database's schema to the newest migration (the API does it too when it
    starts); prints the revision before and after."""
    from alembic.migration import MigrationContext
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from services.store.db import make_engine, migrate

    url = database_url or f"sqlite:///{data_dir.expanduser() / 'crucible.db'}"
    shown = make_url(url).render_as_string(hide_password=True)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
        migrate(engine)
        with engine.connect() as conn:
            after = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        console.print(f"[red]Migration of {shown} failed:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    if as_json:
        _out({"database": shown, "before": before, "after": after}, True)
        return
    change = "already current" if before == after else f"{before or 'empty'} -> {after}"
    console.print(f"{shown}: {change} (revision {after})", highlight=False)


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
    try:
        items = _client(url, token).tokens(user)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for t in items:
        console.print(_token_line(t), highlight=False)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: str,
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a token (yours; an admin: anyone's): refused from now on, serving included."""
    try:
        t = _client(url, token).revoke_token(token_id)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(t, True)
        return
    console.print(_token_line(t), highlight=False)


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
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a user (then give them a token: crucible tokens create NAME --user ID)."""
    try:
        u = _client(url, token).create_user(name, role.value)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(u, True)
        return
    console.print(_user_line(u), highlight=False)


@users_app.command("list")
def users_list(
    url: UrlOpt = "http://127.0.0.1:8080", token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    try:
        items = _client(url, token).users()
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(items, True)
        return
    for u in items:
        console.print(_user_line(u), highlight=False)


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
    try:
        u = _client(url, token).update_user(user_id, role.value if role else None, disabled)
    except CrucibleError as exc:
        _fail(exc)
    if as_json:
        _out(u, True)
        return
    console.print(_user_line(u), highlight=False)


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


if __name__ == "__main__":
    sys.exit(app())
