"""The metric names dashboards and alert rules may use, and a PromQL reader for them.

Three sources, kept apart on purpose:

- Crucible's own metrics: ``services.api.metrics.METRIC_NAMES``, imported, never copied.
- Ray's metrics: the names below, as Ray documents them and exports them on its metrics port
  (prefix ``ray_``, counters with ``_total``, histograms with ``_bucket``/``_sum``/``_count``).
  Docs: https://docs.ray.io/en/latest/cluster/metrics.html (system metrics) and
  https://docs.ray.io/en/latest/serve/monitoring.html#built-in-ray-serve-metrics (Serve).
  Each entry also names the file of the installed Ray where that metric is defined or charted,
  and a test checks it is still there, so an upgrade of Ray that renames one fails loudly.
- Prometheus's own series (``up``).
"""

from __future__ import annotations

import re

import promql_parser

from services.api.metrics import API_LATENCY, METRIC_NAMES

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# name as scraped → file (relative to the installed ray package) that defines or charts it.
_SYSTEM = "dashboard/modules/metrics/dashboards/default_dashboard_panels.py"
_SERVE = "dashboard/modules/metrics/dashboards/serve_dashboard_panels.py"
RAY_METRICS: dict[str, str] = {
    # Node and GPU metrics of Ray's reporter agent (ray_node_gram_* are in MiB).
    "ray_node_cpu_utilization": _SYSTEM,
    "ray_node_cpu_count": _SYSTEM,
    "ray_node_mem_used": _SYSTEM,
    "ray_node_mem_total": _SYSTEM,
    "ray_node_gpus_available": _SYSTEM,
    "ray_node_gpus_utilization": _SYSTEM,
    "ray_node_gram_used": _SYSTEM,
    "ray_node_gram_available": _SYSTEM,
    # Logical resources (labels Name, State).
    "ray_resources": _SYSTEM,
    # Ray Serve: proxy, replicas, controller.
    "ray_serve_num_http_requests_total": _SERVE,
    "ray_serve_num_http_error_requests_total": _SERVE,
    "ray_serve_http_request_latency_ms_bucket": _SERVE,
    "ray_serve_deployment_request_counter_total": _SERVE,
    "ray_serve_deployment_error_counter_total": _SERVE,
    "ray_serve_deployment_processing_latency_ms_bucket": _SERVE,
    "ray_serve_deployment_replica_healthy": _SERVE,
    "ray_serve_deployment_queued_queries": _SERVE,
    # Serve's dynamic batching (@serve.batch), a histogram.
    "ray_serve_actual_batch_size_bucket": "serve/batching.py",
    "ray_serve_actual_batch_size_sum": "serve/batching.py",
    "ray_serve_actual_batch_size_count": "serve/batching.py",
}

# Prometheus's own series for every scrape target.
PROMETHEUS_METRICS: tuple[str, ...] = ("up",)


def crucible_metrics() -> set[str]:
    """The names Crucible's API exports today, as scraped (histograms with their suffixes)."""
    names = set(METRIC_NAMES) - {API_LATENCY}
    names |= {API_LATENCY + suffix for suffix in _HISTOGRAM_SUFFIXES}
    return names


def exported_metrics() -> set[str]:
    return crucible_metrics() | set(RAY_METRICS) | set(PROMETHEUS_METRICS)


def ray_source_name(name: str) -> str:
    """The name as Ray's source spells it: no ``ray_`` prefix, no counter/histogram suffix."""
    base = name.removeprefix("ray_")
    for suffix in ("_total", *_HISTOGRAM_SUFFIXES):
        if base.endswith(suffix):
            return base.removesuffix(suffix)
    return base


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads, from PromQL's own parse tree (ValueError if it does not
    parse). Grafana's variables ($endpoint, ...) must sit inside label matcher strings."""
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if not name:
                # {__name__=~"..."}: refuse, a name the tests cannot check.
                raise ValueError(f"selector without a metric name in {expr!r}")
            names.add(name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*[a-zA-Z_]\w*\s*\)$")


def variable_metric_names(query: str) -> set[str]:
    """Metric names a Grafana Prometheus variable query reads (label_values(metric, label) or
    a PromQL expression)."""
    match = _LABEL_VALUES.match(query.strip())
    if match:
        return {match.group(1)}
    return metric_names(query)
