"""Progress events: how a running job tells the control plane what happened.

The driver posts events to ``POST /v1/internal/jobs/{id}/events`` with the job's own token.
Every event has a key that is unique within its job and deterministic (``trial.epoch:<trial>:3``),
so a batch that is sent twice, after a timeout say, is stored once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

EventType = Literal[
    "job.running",
    "job.waiting",  # no trial can start for want of resources (data: reason, since)
    "job.resumed",  # a trial started again after a job.waiting (data: since, waited_s)
    "trial.started",
    "trial.epoch",
    "trial.finished",
    "trial.failed",
    "trial.stopped",
    "trial.recovered",
    "job.succeeded",
    "job.failed",
]


# In the job's folder: events the API had not taken when the driver had to exit, one JSON a
# line; the reconciler applies them when it settles the job.
UNDELIVERED = "events-undelivered.jsonl"


class Event(BaseModel):
    key: str = Field(min_length=1, max_length=200)
    type: EventType
    ts: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict)


class EventBatch(BaseModel):
    events: list[Event] = Field(max_length=1000)


class EventSink:
    """Posts events from a background thread, in order, retrying until the API takes them.

    Tune callbacks run on the driver's main loop; a slow or restarting API must not stall
    the search, so ``emit`` only enqueues.
    """

    def __init__(self, api_url: str, job_id: str, token: str, timeout: float = 10.0) -> None:
        self._url = f"{api_url.rstrip('/')}/v1/internal/jobs/{job_id}/events"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._sending: list[Event] = []  # the batch being sent, until the API takes it
        self._stopped = False  # close() gave up: stop retrying
        self._client = httpx.Client(timeout=timeout)
        self._thread = threading.Thread(target=self._run, name="crucible-events", daemon=True)
        self._thread.start()

    def emit(self, type: EventType, key: str, **data: Any) -> None:
        self._queue.put(Event(key=key, type=type, data=data))

    def close(self, timeout: float = 60.0) -> bool:
        """Flush what is queued; False when the API could not be reached in time (then
        :meth:`undelivered` says what it has not taken)."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._stopped = True
        self._client.close()
        return not self._thread.is_alive()

    def undelivered(self) -> list[Event]:
        """The events the API has not acknowledged, in order (after a failed ``close``: the
        batch being retried, then the queue). One may be taken while this reads; the API
        stores each key once, so handing it on again does no harm."""
        pending = list(self._sending)
        with self._queue.mutex:
            pending += [e for e in self._queue.queue if e is not None]
        return pending

    def _run(self) -> None:
        done = False
        while not done:
            batch: list[Event] = []
            item = self._queue.get()
            self._sending = batch
            while True:
                if item is None:
                    done = True
                    break
                batch.append(item)
                if len(batch) >= 200:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch and not self._send(batch):
                return  # stopped: the batch stays in _sending for undelivered()
            self._sending = []

    def _send(self, batch: list[Event]) -> bool:
        """True once the API has answered for the batch; False when close() gave up."""
        body = EventBatch(events=batch).model_dump(mode="json")
        delay = 0.5
        while not self._stopped:
            try:
                r = self._client.post(self._url, json=body, headers=self._headers)
                if r.status_code < 500:
                    if r.status_code >= 400:
                        # A 4xx will not change on retry (job cancelled, token revoked).
                        log.warning("control plane refused events: %s %s", r.status_code, r.text)
                    return True
                log.warning("control plane answered %s; retrying", r.status_code)
            except httpx.HTTPError as exc:
                log.warning("cannot reach control plane (%s); retrying", exc)
            except RuntimeError:
                if self._stopped:
                    break  # close() closed the client under this request
                raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        return False


# --- batch scoring -------------------------------------------------------------------------


class ScoringReport(BaseModel):
    """Where a scoring run stands, as its driver reports it to
    ``POST /v1/internal/scoring/{id}/report``. Each report is the whole state, not a delta,
    so a report sent twice, or one overtaken by a newer one, changes nothing."""

    status: Literal["running", "succeeded", "failed"]
    rows_done: int = Field(default=0, ge=0)
    rows_total: int | None = Field(default=None, ge=0)
    error: str | None = Field(default=None, max_length=20_000)


class ReportSender:
    """Posts a scoring run's reports from a background thread, always the newest one.

    Progress is a level, not a history: while the API is slow, a newer report replaces the one
    waiting to go, so the driver never blocks on it and never builds a backlog. Final reports
    (succeeded, failed) are retried until the API takes them or ``close`` gives up.
    """

    def __init__(self, api_url: str, run_id: str, token: str, timeout: float = 10.0) -> None:
        self._url = f"{api_url.rstrip('/')}/v1/internal/scoring/{run_id}/report"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._client = httpx.Client(timeout=timeout)
        self._cond = threading.Condition()
        self._pending: ScoringReport | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="crucible-report", daemon=True)
        self._thread.start()

    def report(self, report: ScoringReport) -> None:
        with self._cond:
            self._pending = report
            self._cond.notify()

    def close(self, timeout: float = 60.0) -> bool:
        """Send what is pending; False when the API could not be reached in time."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        self._client.close()
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._pending is None:
                    return
                report, self._pending = self._pending, None
            self._send(report)

    def _superseded(self) -> bool:
        with self._cond:
            return self._pending is not None

    def _send(self, report: ScoringReport) -> None:
        body = report.model_dump(mode="json")
        delay = 0.5
        while True:
            try:
                r = self._client.post(self._url, json=body, headers=self._headers)
                if r.status_code < 500:
                    if r.status_code >= 400:
                        log.warning(
                            "control plane refused the report: %s %s", r.status_code, r.text
                        )
                    return
                log.warning("control plane answered %s; retrying", r.status_code)
            except httpx.HTTPError as exc:
                log.warning("cannot reach control plane (%s); retrying", exc)
            if report.status == "running" and self._superseded():
                return  # a newer report says more than this one would
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
