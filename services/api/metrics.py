"""Prometheus metrics of the control plane. Names are the contract with ``dashboards/``.

Job and trial figures are read from the database at scrape time: jobs are never deleted and
final statuses never change, so counts of final statuses are true counters that survive API
restarts (scrape one API replica for them, or they add up twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

API_REQUESTS = "crucible_api_requests_total"
API_LATENCY = "crucible_api_request_duration_seconds"
JOBS_SUBMITTED = "crucible_jobs_submitted_total"
JOBS_FINISHED = "crucible_jobs_finished_total"
JOBS_BY_STATUS = "crucible_jobs"
TRIALS_FINISHED = "crucible_trials_finished_total"

METRIC_NAMES = (
    API_REQUESTS,
    API_LATENCY,
    JOBS_SUBMITTED,
    JOBS_FINISHED,
    JOBS_BY_STATUS,
    TRIALS_FINISHED,
)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")
FINAL_TRIAL_STATUSES = ("succeeded", "stopped", "failed", "cancelled")

# (jobs by status, trials by status)
CountsReader = Callable[[], tuple[dict[str, int], dict[str, int]]]


class Metrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self, counts: CountsReader) -> None:
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
