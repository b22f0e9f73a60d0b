"""Prometheus alert rules (dashboards/prometheus/crucible-alerts.yaml): the rule file's
structure as Prometheus reads it, PromQL that parses, and metric names that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.metric_names import exported_metrics, metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "dashboards" / "prometheus" / "crucible-alerts.yaml"
# Prometheus's duration syntax (e.g. 5m, 1h30m).
DURATION = re.compile(r"^(0|([0-9]+(ms|[smhdwy]))+)$")
# Keys Prometheus accepts in a rule group and in an alerting rule (rule files reject others).
GROUP_KEYS = {"name", "interval", "limit", "query_offset", "labels", "rules"}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
REQUIRED_ALERTS = {
    "CrucibleAPIDown",
    "CrucibleJobFailureRate",
    "CrucibleEndpointHighErrorRate",
    "CrucibleEndpointHighLatency",
    "CrucibleEndpointDrift",
}


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_rule_file_structure() -> None:
    data = yaml.safe_load(RULES.read_text())
    assert set(data) == {"groups"}
    names = [g["name"] for g in data["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in data["groups"]:
        assert set(group) <= GROUP_KEYS, group["name"]
        assert group["rules"], group["name"]


def test_required_alerts_are_there_once() -> None:
    alerts = [r["alert"] for r in _rules()]
    assert len(alerts) == len(set(alerts))
    assert set(alerts) >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["alert"])
def test_alerting_rule(rule: dict[str, Any]) -> None:
    assert set(rule) <= RULE_KEYS
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
    assert DURATION.match(rule["for"]) and rule["for"] != "0"
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # Templates in annotations use Go's {{ }} with balanced braces.
    for text in rule["annotations"].values():
        assert text.count("{{") == text.count("}}")
    try:
        names = metric_names(rule["expr"])
    except ValueError as e:
        raise AssertionError(f"{rule['alert']}: expr is not PromQL: {e}") from e
    unknown = names - exported_metrics()
    assert not unknown, f"{rule['alert']} reads {sorted(unknown)}, which nothing exports"


def test_api_down_selects_the_chart_scrape_job() -> None:
    """The ServiceMonitor relabels job to crucible-api; the alert must select that job."""
    rule = next(r for r in _rules() if r["alert"] == "CrucibleAPIDown")
    assert 'job="crucible-api"' in rule["expr"]
