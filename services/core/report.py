"""Audit reports as one self-contained HTML page: inline SVG plots, no script, no network.

A reviewer gets the page from ``GET /v1/jobs/{id}/audit.html`` or ``/v1/audits/{id}.html``
and can keep or mail it as a single file. Every number on it is read from the audit document
(the JSON at the same path without ``.html``), which stays the machine-readable source.
PDF: ``?format=pdf`` prints the page with headless Chromium where the API host has it (see
:func:`to_pdf`), or by hand::

    chromium --headless --no-sandbox --disable-gpu --no-pdf-header-footer \\
        --print-to-pdf=audit.pdf audit.html
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from services.core.errors import Conflict, Unavailable
from services.store.models import Audit, Dataset, Job
from services.store.repositories import DatasetRepository, EndpointRepository, ModelRepository

METRIC_LABELS = {
    "base_rate": "Base rate",
    "selection_rate": "Selection rate",
    "accuracy": "Accuracy",
    "precision": "Precision",
    "true_positive_rate": "True positive rate",
    "false_positive_rate": "False positive rate",
    "false_negative_rate": "False negative rate",
}
# The rates drawn as bars: the ones the disparities compare, and precision/accuracy beside them.
PLOTTED = ("selection_rate", "true_positive_rate", "false_positive_rate", "precision", "accuracy")
DISPARITY_LABELS = {
    "demographic_parity": "Demographic parity (selection rate)",
    "equalized_odds": "Equalized odds (worse of TPR and FPR)",
    "equal_opportunity": "Equal opportunity (TPR)",
    "accuracy": "Accuracy",
}

PASS = "#1a7f37"
FAIL = "#cf222e"
INK = "#24292f"
MUTED = "#6e7781"
BAR = "#4c78a8"
SMALL = "#b6bcc3"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#24292f;
margin:0 auto;max-width:1100px;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid
#d0d7de;padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}
.verdict{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.pass{background:#1a7f37}.fail{background:#cf222e}.muted{color:#6e7781}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f8fa}td.l,th.l{text-align:left}
.ci{color:#6e7781;font-size:11px;display:block}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plots svg{border:1px solid #eaeef2;border-radius:4px;background:#fff}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}dl.kv dt{font-weight:600}
dl.kv dd{margin:0;overflow-wrap:anywhere}
li{margin:2px 0}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
@media print{body{max-width:none;padding:0}h2{break-after:avoid}svg{break-inside:avoid}}
"""


@dataclass
class ModelCard:
    """What the report says about the model beside the audit itself."""

    title: str
    subject: str
    json_path: str
    intended_use: str | None = None
    data: list[tuple[str, str]] = field(default_factory=list)
    metrics: list[tuple[str, str]] = field(default_factory=list)
    lineage: list[tuple[str, str]] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    # The job's compression report (evaluation["compression"]) when it built a compressed variant.
    compression: dict[str, Any] | None = None


def _f(x: Any, digits: int = 3) -> str:
    return "\u2013" if x is None else f"{x:.{digits}f}"


def _e(x: Any) -> str:
    return escape(str(x), quote=True)


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def require_report_version(doc: dict[str, Any], what: str) -> None:
    if doc.get("task") == "regression":
        raise Conflict(f"the audit of {what} is a regression audit; it is served as JSON only")
    if doc.get("version") != 2:
        raise Conflict(
            f"the audit of {what} was made before reports existed; rerun it for a report"
        )


# ---------------------------------------------------------------------------------------------
# plots


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}" '
        f'font-family="system-ui,sans-serif" font-size="11">' + "".join(body) + "</svg>"
    )


def bars_svg(section: dict[str, Any], metric: str) -> str:
    """One rate per group as a bar, its bootstrap interval as a whisker, overall dashed."""
    groups = section["groups"]
    label_w, plot_w, row_h, top = 150, 200, 20, 30
    width, height = label_w + plot_w + 60, top + row_h * len(groups) + 24

    def x(v: float) -> float:
        return label_w + plot_w * min(max(v, 0.0), 1.0)

    body = [
        f'<text x="8" y="18" font-size="13" font-weight="600" fill="{INK}">'
        f"{_e(_label(metric))}</text>"
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        tx = x(tick)
        body.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 20}" '
            f'stroke="#eaeef2"/><text x="{tx:.1f}" y="{height - 8}" text-anchor="middle" '
            f'fill="{MUTED}">{tick:g}</text>'
        )
    for i, g in enumerate(groups):
        y = top + i * row_h
        value = g["metrics"].get(metric)
        name = g["group"] + (" (small)" if g["small"] else "")
        short = name if len(name) <= 24 else name[:23] + "\u2026"
        body.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end" fill="{INK}">'
            f"<title>{_e(name)} (n={g['count']})</title>{_e(short)}</text>"
        )
        if value is None:
            continue
        colour = SMALL if g["small"] else BAR
        body.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{x(value) - label_w:.1f}" height="12" '
            f'fill="{colour}"><title>{_e(g["group"])}: {_f(value)}</title></rect>'
        )
        iv = g["intervals"].get(metric)
        if iv and iv.get("low") is not None and iv.get("high") is not None:
            lo, hi = x(iv["low"]), x(iv["high"])
            body.append(
                f'<g stroke="{INK}" stroke-width="1.2"><line x1="{lo:.1f}" y1="{y + 9}" '
                f'x2="{hi:.1f}" y2="{y + 9}"/><line x1="{lo:.1f}" y1="{y + 5}" x2="{lo:.1f}" '
                f'y2="{y + 13}"/><line x1="{hi:.1f}" y1="{y + 5}" x2="{hi:.1f}" '
                f'y2="{y + 13}"/></g>'
            )
        body.append(
            f'<text x="{label_w + plot_w + 6}" y="{y + 13}" fill="{INK}">{_f(value)}</text>'
        )
    overall = section["overall"].get(metric)
    if overall is not None:
        ox = x(overall)
        body.append(
            f'<line x1="{ox:.1f}" y1="{top - 6}" x2="{ox:.1f}" y2="{height - 20}" '
            f'stroke="{FAIL}" stroke-dasharray="4 3"><title>overall {_f(overall)}</title></line>'
        )
    return _svg(width, height, body, f"{_label(metric)} by {section['name']}")


def checks_svg(checks: list[dict[str, Any]]) -> str:
    """Each check on a 0..1 scale: allowed region, threshold, point, interval, compared value."""
    label_w, plot_w, row_h, top = 440, 340, 26, 28
    width, height = label_w + plot_w + 90, top + row_h * len(checks) + 26

    def x(v: float) -> float:
        return label_w + plot_w * min(max(v, 0.0), 1.0)

    body = [
        f'<text x="8" y="18" font-size="13" font-weight="600" fill="{INK}">'
        "Disparities against their limits</text>"
    ]
    for tick in (0, 0.2, 0.4, 0.6, 0.8, 1):
        tx = x(tick)
        body.append(
            f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 20}" '
            f'stroke="#eaeef2"/><text x="{tx:.1f}" y="{height - 8}" text-anchor="middle" '
            f'fill="{MUTED}">{tick:g}</text>'
        )
    for i, c in enumerate(checks):
        y = top + i * row_h
        colour = PASS if c["passed"] else FAIL
        thr = x(c["threshold"])
        # The region where the compared value passes.
        ok_x, ok_w = (thr, x(1) - thr) if c["rule"] == ">=" else (x(0), thr - x(0))
        text = (
            f"{c['metric'].replace('_', ' ')} \u00b7 {c['feature']}"
            f" \u00b7 {c['method'].replace('_', ' ')} \u00b7 {c['compare']}"
        )
        short = text if len(text) <= 72 else text[:71] + "\u2026"
        body.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" fill="{INK}">'
            f"<title>{_e(c['reason'])}</title>{_e(short)}</text>"
            f'<rect x="{ok_x:.1f}" y="{y + 4}" width="{ok_w:.1f}" height="16" '
            f'fill="{PASS}" fill-opacity="0.10"/>'
            f'<line x1="{thr:.1f}" y1="{y + 2}" x2="{thr:.1f}" y2="{y + 22}" stroke="{INK}" '
            f'stroke-dasharray="3 2"><title>limit {c["rule"]} {c["threshold"]:g}</title></line>'
        )
        iv = c.get("interval")
        if iv and iv.get("low") is not None and iv.get("high") is not None:
            lo, hi = x(iv["low"]), x(iv["high"])
            body.append(
                f'<g stroke="{colour}" stroke-width="1.5"><line x1="{lo:.1f}" y1="{y + 12}" '
                f'x2="{hi:.1f}" y2="{y + 12}"/><line x1="{lo:.1f}" y1="{y + 7}" x2="{lo:.1f}" '
                f'y2="{y + 17}"/><line x1="{hi:.1f}" y1="{y + 7}" x2="{hi:.1f}" '
                f'y2="{y + 17}"/></g>'
            )
        if c.get("point") is not None:
            body.append(
                f'<circle cx="{x(c["point"]):.1f}" cy="{y + 12}" r="4.5" fill="{colour}">'
                f"<title>point estimate {_f(c['point'])}</title></circle>"
            )
        if c.get("value") is not None and c["compare"] == "interval":
            vx = x(c["value"])
            body.append(
                f'<path d="M{vx:.1f} {y + 5} l5 7 l-5 7 l-5 -7 z" fill="#fff" '
                f'stroke="{colour}" stroke-width="1.5"><title>compared: {_f(c["value"])}'
                "</title></path>"
            )
        verdict = "pass" if c["passed"] else "FAIL"
        body.append(
            f'<text x="{label_w + plot_w + 10}" y="{y + 15}" fill="{colour}" '
            f'font-weight="600">{verdict} {_f(c["value"])}</text>'
        )
    return _svg(width, height, body, "disparities against their limits")


def confusion_svg(group: dict[str, Any]) -> str:
    """The group's 2x2 confusion matrix; shading is the share of its true-class row."""
    cm = group["confusion_matrix"]
    cells = [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]]
    names = [["TN", "FP"], ["FN", "TP"]]
    cell, left, top = 58, 62, 40
    width, height = left + 2 * cell + 12, top + 2 * cell + 12
    title = group["group"] if len(group["group"]) <= 26 else group["group"][:25] + "\u2026"
    body = [
        f'<text x="6" y="15" font-size="12" font-weight="600" fill="{INK}">'
        f"<title>{_e(group['group'])}</title>{_e(title)}</text>"
        f'<text x="{left + cell}" y="32" text-anchor="middle" fill="{MUTED}">predicted 0 / 1'
        "</text>"
    ]
    for r in range(2):
        total = cells[r][0] + cells[r][1]
        body.append(
            f'<text x="{left - 6}" y="{top + r * cell + cell / 2 + 4}" text-anchor="end" '
            f'fill="{MUTED}">true {r}</text>'
        )
        for c in range(2):
            share = cells[r][c] / total if total else 0.0
            body.append(
                f'<rect x="{left + c * cell}" y="{top + r * cell}" width="{cell}" '
                f'height="{cell}" fill="{BAR}" fill-opacity="{0.08 + 0.8 * share:.2f}" '
                f'stroke="#fff"/><text x="{left + c * cell + cell / 2}" '
                f'y="{top + r * cell + 24}" text-anchor="middle" font-size="13" '
                f'fill="{INK}">{cells[r][c]}</text><text x="{left + c * cell + cell / 2}" '
                f'y="{top + r * cell + 40}" text-anchor="middle" fill="{INK}">'
                f"{names[r][c]} {100 * share:.0f}%</text>"
            )
    return _svg(width, height, body, f"confusion matrix of {group['group']}")


# ---------------------------------------------------------------------------------------------
# words


def summary(doc: dict[str, Any]) -> list[str]:
    """The audit in plain sentences, most important first."""
    checks = doc["checks"]
    failed = [c for c in checks if not c["passed"]]
    out: list[str] = []
    if not doc["features"]:
        out.append("No sensitive features were given, so no groups were compared.")
    elif not checks:
        out.append("No limits were set, so the audit reports disparities without judging them.")
    elif failed:
        out.append(
            f"The model fails {len(failed)} of {len(checks)} fairness checks; the first failures:"
        )
        out += [c["reason"] for c in failed[:6]]
    else:
        out.append(f"The model passes all {len(checks)} fairness checks.")
    for section in doc["features"].values():
        dp = section["disparities"]["demographic_parity"]["between_groups"]
        groups = [g for g in section["groups"] if g["in_disparities"]]
        if len(groups) >= 2:
            lo = min(groups, key=lambda g: g["metrics"]["selection_rate"])
            hi = max(groups, key=lambda g: g["metrics"]["selection_rate"])
            out.append(
                f"By {section['name']}: the favourable outcome is predicted for "
                f"{100 * hi['metrics']['selection_rate']:.1f}% of {hi['group']} "
                f"but {100 * lo['metrics']['selection_rate']:.1f}% of {lo['group']} "
                f"(ratio {_f(dp['ratio'])})."
            )
        if section["unknown_rows"]:
            out.append(
                f"{section['unknown_rows']} rows have no value for {section['name']}; they "
                "are audited as the group 'unknown', not dropped."
            )
        if section["small_groups"]:
            out.append(
                f"Groups of {section['name']} with fewer than "
                f"{doc['settings']['min_group_count']} rows are too small to judge: "
                f"{', '.join(section['small_groups'])} (policy: "
                f"{doc['settings']['small_groups']})."
            )
        if section["n_empty_intersections"]:
            out.append(
                f"{section['n_empty_intersections']} combinations of {section['name']} have "
                f"no rows: {', '.join(section['empty_intersections'][:8])}."
            )
    b = doc.get("bootstrap")
    if b:
        out.append(
            f"Intervals are {100 * b['confidence']:g}% bootstrap percentile intervals from "
            f"{b['n_resamples']} resamples (seed {b['seed']})."
        )
    return out


def caveats(doc: dict[str, Any]) -> list[str]:
    """What a reader must keep in mind whatever the numbers say."""
    out = [
        f"Outcomes are binary: '{doc['positive_label']}' counts as favourable, every other "
        "class as not.",
        f"The audit covers these {doc['num_rows']} rows only; other populations may differ.",
        "Passing these checks is not evidence that the model is fair in every sense: the "
        "criteria conflict with each other, and the four-fifths default is a screening "
        "convention, not a legal test.",
    ]
    small = [s["name"] for s in doc["features"].values() if s["small_groups"]]
    if small:
        out.append(f"Some groups ({', '.join(small)}) are small; their rates have wide intervals.")
    return out


# ---------------------------------------------------------------------------------------------
# page


def _kv(rows: list[tuple[str, str]]) -> str:
    if not rows:
        return '<p class="muted">Not recorded.</p>'
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f'<dl class="kv">{items}</dl>'


def _checks_table(checks: list[dict[str, Any]]) -> str:
    head = (
        "<tr><th class=l>Feature</th><th class=l>Disparity</th><th class=l>Method</th>"
        "<th class=l>Compared</th><th>Point</th><th>Interval</th><th>Value</th>"
        "<th>Limit</th><th class=l>Result</th></tr>"
    )
    rows = []
    for c in checks:
        iv = c.get("interval")
        interval = f"[{_f(iv['low'])}, {_f(iv['high'])}]" if iv else "\u2013"
        result = (
            '<span class="ok">passed</span>' if c["passed"] else '<span class="bad">failed</span>'
        )
        rows.append(
            f"<tr><td class=l>{_e(c['feature'])}</td><td class=l>{_e(c['metric'])}</td>"
            f"<td class=l>{_e(c['method'])}</td><td class=l>{_e(c['compare'])}</td>"
            f"<td>{_f(c['point'])}</td><td>{interval}</td><td>{_f(c['value'])}</td>"
            f"<td>{_e(c['rule'])} {c['threshold']:g}</td><td class=l>{result}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _groups_table(section: dict[str, Any]) -> str:
    metrics = list(METRIC_LABELS)
    head = "<tr><th class=l>Group</th><th>Rows</th>" + "".join(
        f"<th>{_e(METRIC_LABELS[m])}</th>" for m in metrics
    )
    rows = []
    for g in section["groups"]:
        flag = " <span class=muted>(small)</span>" if g["small"] else ""
        cells = []
        for m in metrics:
            iv = g["intervals"].get(m)
            ci = f"<span class=ci>[{_f(iv['low'])}, {_f(iv['high'])}]</span>" if iv else ""
            cells.append(f"<td>{_f(g['metrics'].get(m))}{ci}</td>")
        rows.append(
            f"<tr><td class=l>{_e(g['group'])}{flag}</td><td>{g['count']}</td>"
            + "".join(cells)
            + "</tr>"
        )
    overall = "".join(f"<td>{_f(section['overall'].get(m))}</td>" for m in metrics)
    rows.append(f"<tr><th class=l>All rows</th><td></td>{overall}</tr>")
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def _disparities_table(section: dict[str, Any]) -> str:
    head = (
        "<tr><th class=l>Disparity</th><th>Difference between groups</th>"
        "<th>Ratio between groups</th><th>Difference to overall</th>"
        "<th>Ratio to overall</th></tr>"
    )
    rows = []
    for family, d in section["disparities"].items():
        cells = []
        for method in ("between_groups", "to_overall"):
            for kind in ("difference", "ratio"):
                iv = d[method].get(f"{kind}_interval")
                ci = f"<span class=ci>[{_f(iv['low'])}, {_f(iv['high'])}]</span>" if iv else ""
                cells.append(f"<td>{_f(d[method].get(kind))}{ci}</td>")
        label = DISPARITY_LABELS.get(family, family)
        rows.append(f"<tr><td class=l>{_e(label)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _section_html(section: dict[str, Any]) -> str:
    notes = []
    if section["unknown_rows"]:
        notes.append(f"{section['unknown_rows']} rows without a value form the group 'unknown'.")
    if section["small_groups"]:
        notes.append("Small groups (grey bars): " + ", ".join(section["small_groups"]) + ".")
    if section["n_empty_intersections"]:
        listed = ", ".join(section["empty_intersections"][:20])
        notes.append(f"Combinations without rows ({section['n_empty_intersections']}): {listed}.")
    notes_html = "".join(f"<li>{_e(n)}</li>" for n in notes)
    bars = "".join(bars_svg(section, m) for m in PLOTTED)
    matrices = "".join(confusion_svg(g) for g in section["groups"])
    return (
        f"<h3>By {_e(section['name'])}</h3>"
        + (f"<ul>{notes_html}</ul>" if notes else "")
        + _groups_table(section)
        + '<p class="muted">Bars: the rate per group; whiskers: its bootstrap interval; '
        "dashed red line: the rate on all rows.</p>"
        + f'<div class="plots">{bars}</div>'
        + _disparities_table(section)
        + "<p class=muted>Confusion matrices per group (rows: true outcome, columns: "
        "predicted; 1 is favourable).</p>" + f'<div class="plots">{matrices}</div>'
    )


def _mitigation_html(doc: dict[str, Any]) -> str:
    """The mitigated candidate beside the best model: what fairness costs in accuracy."""
    m = doc.get("mitigation")
    if not m:
        return ""
    mdoc, base = m["audit"], m.get("compared_with", {})
    mine = {(c["feature"], c["metric"], c["method"]): c for c in mdoc["checks"]}

    def verdict(passed: Any) -> str:
        return '<span class="ok">passed</span>' if passed else '<span class="bad">failed</span>'

    rows = [
        f"<tr><td class=l>test accuracy</td><td>{_f(base.get('accuracy'))}</td>"
        f"<td>{_f(m['evaluation'].get('accuracy'))}</td></tr>",
        f"<tr><td class=l>audit</td><td>{verdict(doc['passed'])}</td>"
        f"<td>{verdict(mdoc['passed'])}</td></tr>",
    ]
    for c in doc["checks"]:
        other = mine.get((c["feature"], c["metric"], c["method"]))
        if other is not None:
            rows.append(
                f"<tr><td class=l>{_e(c['feature'])}: {_e(c['metric'])}</td>"
                f"<td>{_f(c['value'])}</td><td>{_f(other['value'])}</td></tr>"
            )
    return (
        "<h2>Mitigated candidate</h2>"
        f"<p>{_e(m['method'])} with the constraint {_e(m['constraint'])} on the groups of "
        f"<b>{_e(m['feature'])}</b>, fitted on the {_e(m['fitted_on'])} and judged on the same "
        f"test rows as the best model. Either can be promoted; {_e(m['serving_note'])}.</p>"
        "<table><tr><th class=l></th><th>Best model</th><th>Mitigated</th></tr>"
        f"{''.join(rows)}</table>"
        + (checks_svg(mdoc["checks"]) + _checks_table(mdoc["checks"]) if mdoc["checks"] else "")
    )


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "\u2013"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{int(n)} B"


def _ratio(new: Any, old: Any) -> str:
    ok = isinstance(new, int | float) and isinstance(old, int | float) and old
    return f" ({new / old:.2f}\u00d7)" if ok else ""


def _compression_html(doc: dict[str, Any], c: dict[str, Any] | None) -> str:
    """The compressed variant beside the model it came from: accuracy, size, latency and every
    fairness check again, since compression can move a group's error rates."""
    if not c:
        return ""

    def verdict(passed: Any) -> str:
        if passed is None:
            return "\u2013"
        return '<span class="ok">passed</span>' if passed else '<span class="bad">failed</span>'

    def row(label: str, old: str, new: str) -> str:
        return f"<tr><td class=l>{_e(label)}</td><td>{old}</td><td>{new}</td></tr>"

    before, after = c.get("original_metrics") or {}, c.get("metrics") or {}
    rows = [row(f"test {k}", _f(before.get(k)), _f(after.get(k))) for k in before if k in after]
    rows += [
        row(
            "size (serialised state dict)",
            _size(c.get("original_size_bytes")),
            _size(c.get("size_bytes")) + _ratio(c.get("size_bytes"), c.get("original_size_bytes")),
        ),
        row(
            "size, deflated",
            _size(c.get("original_deflated_size_bytes")),
            _size(c.get("deflated_size_bytes"))
            + _ratio(c.get("deflated_size_bytes"), c.get("original_deflated_size_bytes")),
        ),
        row(
            f"CPU latency p50, {c.get('latency_batch_rows')} rows (ms)",
            _f(c.get("original_latency_ms_p50"), 2),
            _f(c.get("latency_ms_p50"), 2),
        ),
        row("weight sparsity", _f(c.get("original_sparsity")), _f(c.get("sparsity"))),
        row("audit", verdict(c.get("original_audit_passed")), verdict(c.get("audit_passed"))),
    ]
    audit = c.get("audit") or {}
    mine = {(x["feature"], x["metric"], x["method"]): x for x in audit.get("checks", [])}
    for x in doc.get("checks", []):
        other = mine.get((x["feature"], x["metric"], x["method"]))
        if other is not None:
            rows.append(
                row(
                    f"{x['feature']}: {x['metric']}",
                    f"{_f(x['value'])} {verdict(x['passed'])}",
                    f"{_f(other['value'])} {verdict(other['passed'])}",
                )
            )
    steps = []
    if c.get("prune") is not None:
        steps.append(
            f"{c['prune']:.0%} of the Linear and Conv weights zeroed, smallest magnitude first"
        )
    if c.get("quantize") == "dynamic_int8":
        steps.append("Linear, LSTM and GRU weights quantized to int8 (dynamic quantization)")
    agreement = c.get("prediction_agreement")
    agree = (
        f" It predicts the same as the original on {agreement:.1%} of the test rows."
        if isinstance(agreement, int | float)
        else ""
    )
    checks = audit.get("checks") or []
    return (
        "<h2>Compressed candidate</h2>"
        f"<p>{_e('; '.join(steps) or c.get('method', ''))}. Evaluated and audited again on the "
        f"same test rows as the best model; it is the candidate promoted by default.{agree} "
        "Dynamic quantization quantizes activations per batch, so a row's scores can move in "
        "the last digits with the rows it is batched with.</p>"
        "<table><tr><th class=l></th><th>Best model</th><th>Compressed</th></tr>"
        f"{''.join(rows)}</table>" + (checks_svg(checks) + _checks_table(checks) if checks else "")
    )


def render(doc: dict[str, Any], card: ModelCard) -> str:
    """The whole report page."""
    passed = bool(doc["passed"])
    verdict = (
        '<span class="verdict pass">PASSED</span>'
        if passed
        else '<span class="verdict fail">FAILED</span>'
    )
    checks = doc["checks"]
    summary_html = "".join(f"<li>{_e(s)}</li>" for s in summary(doc))
    checks_html = (
        checks_svg(checks) + _checks_table(checks)
        if checks
        else "<p class=muted>No checks were configured.</p>"
    )
    sections = "".join(_section_html(s) for s in doc["features"].values())
    caveat_html = "".join(f"<li>{_e(c)}</li>" for c in [*card.caveats, *caveats(doc)])
    method_html = _kv([(k, str(v)) for k, v in doc.get("method", {}).items()])
    intended = card.intended_use or "Not stated (set audit.intended_use in the job spec)."
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        # Nothing may load from anywhere: the page must read the same offline and in a year.
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(card.title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(card.title)} {verdict}</h1>"
        f'<p class="muted">{_e(card.subject)} \u00b7 {doc["num_rows"]} rows \u00b7 '
        f"favourable outcome: {_e(doc['positive_label'])} \u00b7 machine-readable source: "
        f"<code>{_e(card.json_path)}</code></p>"
        f"<h2>Summary</h2><ul>{summary_html}</ul>"
        f"<h2>Checks</h2>{checks_html}"
        f"<h2>Groups</h2>{sections or '<p class=muted>No sensitive features.</p>'}"
        f"{_mitigation_html(doc)}"
        f"{_compression_html(doc, card.compression)}"
        "<h2>Model card</h2>"
        f"<h3>Intended use</h3><p>{_e(intended)}</p>"
        f"<h3>Data</h3>{_kv(card.data)}"
        f"<h3>Metrics</h3>{_kv(card.metrics)}"
        f"<h3>Caveats</h3><ul>{caveat_html}</ul>"
        f"<h3>Lineage</h3>{_kv(card.lineage)}"
        f"<h2>Method</h2>{method_html}"
        "</body></html>"
    )


# ---------------------------------------------------------------------------------------------
# PDF

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """Chromium for PDFs: CRUCIBLE_CHROMIUM, else the first of BROWSERS on PATH."""
    configured = os.environ.get("CRUCIBLE_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


PDF_COMMAND = (
    "chromium --headless --no-sandbox --disable-gpu --no-pdf-header-footer "
    "--print-to-pdf=audit.pdf audit.html"
)


def to_pdf(html: str, timeout_s: float = 90.0) -> bytes:
    """Print the page to PDF with headless Chromium; 503 where the host has none."""
    browser = find_browser()
    if browser is None:
        raise Unavailable(
            "PDF rendering needs Chromium on the API host (or CRUCIBLE_CHROMIUM); save the "
            f"HTML report and run: {PDF_COMMAND}"
        )
    with tempfile.TemporaryDirectory(prefix="crucible-report-") as tmp:
        page, pdf = Path(tmp) / "audit.html", Path(tmp) / "audit.pdf"
        page.write_text(html, encoding="utf-8")
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--no-pdf-header-footer",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--print-to-pdf={pdf}",
            page.as_uri(),
        ]
        try:
            subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"Chromium took over {timeout_s:g}s to print the report") from None
        if not pdf.exists() or pdf.stat().st_size == 0:
            raise Unavailable(f"Chromium did not print the report; run by hand: {PDF_COMMAND}")
        return pdf.read_bytes()


# ---------------------------------------------------------------------------------------------
# model cards from the store


def _dataset_rows(dataset: Dataset | None, sha256: str | None = None) -> list[tuple[str, str]]:
    if dataset is None:
        return []
    rows = [
        ("dataset", f"{dataset.name} ({dataset.id})"),
        ("rows in the dataset", str(dataset.num_rows)),
        ("sha256", sha256 or dataset.sha256),
    ]
    if dataset.license:
        rows.append(("licence", dataset.license))
    if sha256 is not None and sha256 != dataset.sha256:
        rows.append(("note", f"the dataset has changed since (now {dataset.sha256})"))
    return rows


def _rate(x: Any) -> str:
    return _f(x, 4) if isinstance(x, int | float) else "\u2013"


def job_card(session: Session, job: Job) -> ModelCard:
    spec = job.spec
    audit_spec = spec.get("audit", {})
    dataset = DatasetRepository(session).get(job.dataset_id)
    doc = job.audit or {}
    data = _dataset_rows(dataset)
    data += [
        ("target", str(spec["dataset"]["target"])),
        ("audited rows", f"{doc.get('num_rows')} (the held-out test split)"),
        ("sensitive features", ", ".join(audit_spec.get("sensitive_features", [])) or "none"),
        (
            "sensitive features as model inputs",
            "yes" if audit_spec.get("use_as_features") else "no",
        ),
    ]
    ev = job.evaluation or {}
    metrics = [
        (name, _rate(ev.get(key)))
        for name, key in (
            ("test accuracy", "accuracy"),
            ("test precision (favourable class)", "precision"),
            ("test recall (favourable class)", "recall"),
            ("test F1 macro", "f1_macro"),
        )
        if key in ev
    ]
    metrics += [(f"validation {k}", _rate(v)) for k, v in (job.best_metrics or {}).items()]
    lineage = [
        ("job", f"{job.name} ({job.id})"),
        ("finished", job.finished_at.isoformat() if job.finished_at else "\u2013"),
        ("best trial", job.best_trial_key or "\u2013"),
        ("model bundle sha256", job.bundle_digest or "\u2013"),
    ]
    model = ModelRepository(session).for_job(job.id)
    if model is not None:
        serving = [e.name for e in EndpointRepository(session).list() if e.model_id == model.id]
        lineage.append(("model version", model.id))
        lineage.append(("serving at endpoints", ", ".join(serving) or "none"))
    else:
        lineage.append(("model version", "not promoted"))
    proxies = (
        "The sensitive features were inputs to the model."
        if audit_spec.get("use_as_features")
        else "The sensitive features were not model inputs, but other columns may stand in "
        "for them."
    )
    return ModelCard(
        title=f"Fairness audit of job {job.name}",
        subject=f"Job {job.id}, best trial {job.best_trial_key}, test split",
        json_path=f"/v1/jobs/{job.id}/audit",
        intended_use=audit_spec.get("intended_use"),
        data=data,
        metrics=metrics,
        lineage=lineage,
        caveats=[proxies],
        compression=ev.get("compression"),
    )


def predictions_card(session: Session, audit: Audit) -> ModelCard:
    req = audit.request
    doc = audit.document
    dataset = DatasetRepository(session).get(audit.dataset_id)
    data = _dataset_rows(dataset, audit.dataset_sha256)
    data += [
        ("label column", str(req["label_column"])),
        ("prediction column", str(req["prediction_column"])),
        ("score column", str(req.get("score_column") or "none")),
        ("sensitive features", ", ".join(req["sensitive_features"])),
    ]
    first = next(iter(doc["features"].values()), None)
    overall = first["overall"] if first else {}
    metrics = [(_label(m), _rate(overall.get(m))) for m in METRIC_LABELS if m in overall]
    lineage = [
        ("audit", f"{audit.name or '(unnamed)'} ({audit.id})"),
        ("created", audit.created_at.isoformat()),
        ("created by token", audit.created_by or "\u2013"),
    ]
    return ModelCard(
        title=f"Fairness audit {audit.name or audit.id}",
        subject=f"Predictions in column '{req['prediction_column']}' against "
        f"'{req['label_column']}'",
        json_path=f"/v1/audits/{audit.id}",
        intended_use=req.get("intended_use"),
        data=data,
        metrics=metrics,
        lineage=lineage,
        caveats=[
            "Crucible did not train this model; only the predictions in the dataset were audited."
        ],
    )
