"""Grafana dashboards (dashboards/grafana/*.json): structure, and every query reads metrics that
exist — Crucible's own (services/api/metrics.py) or Ray's documented ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ray

from services.api.metrics import (
    ENDPOINT_DRIFT_ALERT,
    ENDPOINT_FAIRNESS,
    ENDPOINT_FEATURE_PSI,
    ENDPOINT_LIVE_ACCURACY,
)
from tests.deploy.metric_names import (
    RAY_METRICS,
    crucible_metrics,
    exported_metrics,
    metric_names,
    ray_source_name,
    variable_metric_names,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "dashboards" / "grafana"
DASHBOARDS = sorted(GRAFANA.glob("*.json"))
# Live fairness and drift of endpoints (the serving monitoring of issue 6).
FAIRNESS_DASHBOARD = "crucible-fairness-drift.json"
EXPECTED = {
    "crucible-jobs.json",
    "crucible-cluster.json",
    "crucible-serving.json",
    FAIRNESS_DASHBOARD,
}


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return out


def _queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in _panels(board)
        for target in panel.get("targets", [])
    ]


def _variable_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append((var["name"], query["query"] if isinstance(query, dict) else query))
    return out


def test_the_four_dashboards_are_there() -> None:
    assert {p.name for p in DASHBOARDS} == EXPECTED


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = _load(path)
    assert board["uid"] == path.stem, "uid = file name, so links and provisioning stay stable"
    assert board["title"].startswith("Crucible / ")
    assert "crucible" in board["tags"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board.get("id") is None, "provisioned dashboards carry no database id"
    # The data source is a variable, so the dashboard works with any Prometheus data source.
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = _panels(board)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert target["expr"].strip()


def test_panels_do_not_overlap() -> None:
    for path in DASHBOARDS:
        cells: dict[tuple[int, int], str] = {}
        for panel in _load(path)["panels"]:
            pos = panel["gridPos"]
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, (
                        f"{path.name}: {panel['title']} overlaps {cells[(x, y)]}"
                    )
                    cells[(x, y)] = panel["title"]


def test_dashboard_uids_are_unique() -> None:
    uids = [_load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_queries_parse_and_read_real_metrics(path: Path) -> None:
    board = _load(path)
    allowed = exported_metrics()
    queries = _queries(board) + _variable_queries(board)
    assert queries
    for where, expr in queries:
        try:
            names = variable_metric_names(expr)
        except ValueError as e:
            raise AssertionError(f"{path.name}: {where}: {expr!r} is not PromQL: {e}") from e
        assert names, f"{path.name}: {where} reads no metric"
        unknown = names - allowed
        assert not unknown, (
            f"{path.name}: {where} reads {sorted(unknown)}, which neither Crucible "
            "(services/api/metrics.py) nor Ray exports"
        )


def test_every_crucible_metric_is_charted() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        for _, expr in _queries(_load(path)):
            used |= metric_names(expr)
    assert crucible_metrics() - used <= {
        # Histogram parts read through _bucket only.
        "crucible_api_request_duration_seconds_sum",
        "crucible_api_request_duration_seconds_count",
    }


def test_fairness_dashboard_charts_every_endpoint_monitoring_metric() -> None:
    """The monitoring gauges are exported now (services/api/metrics.py); the dashboard no
    longer calls them planned."""
    board = _load(GRAFANA / FAIRNESS_DASHBOARD)
    assert "NOT EXPORTED" not in board["description"]
    used: set[str] = set()
    for _, expr in _queries(board):
        used |= metric_names(expr)
    assert {
        ENDPOINT_DRIFT_ALERT,
        ENDPOINT_FAIRNESS,
        ENDPOINT_FEATURE_PSI,
        ENDPOINT_LIVE_ACCURACY,
    } <= used & exported_metrics()


@pytest.mark.parametrize("name", sorted(RAY_METRICS))
def test_ray_metric_names_exist_in_installed_ray(name: str) -> None:
    """The Ray names above are the installed Ray's: each appears where RAY_METRICS says."""
    source = Path(ray.__file__).parent / RAY_METRICS[name]
    text = source.read_text()
    assert name in text or f'"{ray_source_name(name)}"' in text, (
        f"{name} is not in {source}: did Ray rename it?"
    )
