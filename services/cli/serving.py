"""Serving: ``promote``, ``rollback``, ``predict``, ``feedback`` and ``endpoints
list/show/monitoring/events/rollback``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.common import (
    JsonOpt,
    TokenOpt,
    UrlOpt,
    _client,
    _fail,
    _key_values,
    _out,
    _run,
    _show,
    app,
    console,
    endpoints_app,
)
from services.client import CrucibleError


class PromoteCandidate(StrEnum):
    """Which of a job's models a promotion serves."""

    best = "best"
    mitigated = "mitigated"
    compressed = "compressed"


@endpoints_app.command("list")
def endpoints_list(
    url: UrlOpt = "http://127.0.0.1:8080",
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    _show(
        lambda: _client(url, token).endpoints(),
        as_json,
        lambda items: [
            f"{e['name']:<24} {e.get('model_id', '')}  {e.get('url', '')}" for e in items
        ],
    )


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
