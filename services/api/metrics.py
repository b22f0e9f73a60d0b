"""Prometheus metrics of the control plane. Names are the contract with ``dashboards/``.

Job and trial figures are read from the database at scrape time: jobs are never deleted and
final statuses never change, so counts of final statuses are true counters that survive API
restarts (scrape one API replica for them, or they add up twice).

Endpoint monitoring figures (live accuracy and fairness from feedback labels, PSI drift per
feature, the drift alert) are gauges computed at scrape time from the logged predictions of
each endpoint's monitoring window (services.core.monitoring, cached a few seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from services.core.monitoring import EndpointSamples

API_REQUESTS = "crucible_api_requests_total"
API_LATENCY = "crucible_api_request_duration_seconds"
JOBS_SUBMITTED = "crucible_jobs_submitted_total"
JOBS_FINISHED = "crucible_jobs_finished_total"
JOBS_BY_STATUS = "crucible_jobs"
TRIALS_FINISHED = "crucible_trials_finished_total"
# Labels: endpoint, model_id.
ENDPOINT_LIVE_ACCURACY = "crucible_endpoint_live_accuracy"
# Labels: endpoint, model_id, sensitive_feature, metric (demographic_parity_difference|_ratio).
ENDPOINT_FAIRNESS = "crucible_endpoint_fairness"
# Labels: endpoint, model_id, feature.
ENDPOINT_FEATURE_PSI = "crucible_endpoint_feature_psi"
# Labels: endpoint. 1 while the endpoint is in a drift alert.
ENDPOINT_DRIFT_ALERT = "crucible_endpoint_drift_alert"

METRIC_NAMES = (
    API_REQUESTS,
    API_LATENCY,
    JOBS_SUBMITTED,
    JOBS_FINISHED,
    JOBS_BY_STATUS,
    TRIALS_FINISHED,
    ENDPOINT_LIVE_ACCURACY,
    ENDPOINT_FAIRNESS,
    ENDPOINT_FEATURE_PSI,
    ENDPOINT_DRIFT_ALERT,
)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")
FINAL_TRIAL_STATUSES = ("succeeded", "stopped", "failed", "cancelled")

# (jobs by status, trials by status)
CountsReader = Callable[[], tuple[dict[str, int], dict[str, int]]]
MonitoringReader = Callable[[], "list[EndpointSamples]"]


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self, counts: CountsReader, monitoring: MonitoringReader | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            API_REQUESTS.removesuffix("_total"),
            "API requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            API_LATENCY,
            "API request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(counts))
        if monitoring is not None:
            self.registry.register(_MonitoringCollector(monitoring))


class RequestMetricsMiddleware:
    """Counts every HTTP request by method, route template and status, and times it.

    Plain ASGI, not Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``): that one
    runs the app in a task of its own and streams the response through a memory channel, which
    cost about half of a no-op route's CPU here (benchmarks/api_load.py)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router puts the matched route in the (shared) scope; none: "unmatched".
            route: Any = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


class _StoreCollector:
    def __init__(self, read: CountsReader) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        jobs, trials = self.read()
        current = GaugeMetricFamily(JOBS_BY_STATUS, "Jobs by current status", labels=["status"])
        for status in JOB_STATUSES:
            current.add_metric([status], jobs.get(status, 0))
        submitted = CounterMetricFamily(JOBS_SUBMITTED.removesuffix("_total"), "Jobs accepted")
        submitted.add_metric([], sum(jobs.values()))
        finished = CounterMetricFamily(
            JOBS_FINISHED.removesuffix("_total"),
            "Jobs that reached a final status",
            labels=["status"],
        )
        for status in FINAL_JOB_STATUSES:
            finished.add_metric([status], jobs.get(status, 0))
        trials_done = CounterMetricFamily(
            TRIALS_FINISHED.removesuffix("_total"), "Trials that ended", labels=["status"]
        )
        for status in FINAL_TRIAL_STATUSES:
            trials_done.add_metric([status], trials.get(status, 0))
        yield from (current, submitted, finished, trials_done)


class _MonitoringCollector:
    def __init__(self, read: MonitoringReader) -> None:
        self.read = read

    def describe(self) -> Iterable[Metric]:
        # Declared without a scrape: registering must not read every endpoint's window.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        accuracy, fairness, psi, alert = self._families()
        for e in self.read():
            for model_id, value in e.accuracy:
                accuracy.add_metric([e.endpoint, model_id], value)
            for model_id, feature, metric, value in e.fairness:
                fairness.add_metric([e.endpoint, model_id, feature, metric], value)
            for model_id, feature, value in e.psi:
                psi.add_metric([e.endpoint, model_id, feature], value)
            alert.add_metric([e.endpoint], 1.0 if e.alert else 0.0)
        return (accuracy, fairness, psi, alert)

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
    ]:
        return (
            GaugeMetricFamily(
                ENDPOINT_LIVE_ACCURACY,
                "Accuracy of the labelled predictions in the endpoint's monitoring window",
                labels=["endpoint", "model_id"],
            ),
            GaugeMetricFamily(
                ENDPOINT_FAIRNESS,
                "Fairness of the predictions in the monitoring window per sensitive feature",
                labels=["endpoint", "model_id", "sensitive_feature", "metric"],
            ),
            GaugeMetricFamily(
                ENDPOINT_FEATURE_PSI,
                "Population stability index of a feature, monitoring window against training",
                labels=["endpoint", "model_id", "feature"],
            ),
            GaugeMetricFamily(
                ENDPOINT_DRIFT_ALERT,
                "1 while the endpoint is in a drift alert",
                labels=["endpoint"],
            ),
        )
