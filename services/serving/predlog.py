"""Sampled prediction logs, sent from a replica to the control plane in the background.

The request path only appends to a bounded buffer; a daemon thread posts batches to
``/v1/internal/endpoints/<name>/predictions`` with the endpoint's token. When the API is down
the buffer keeps the newest records and drops the oldest (counted), so serving never waits on
monitoring and a replica's memory stays bounded.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from typing import Any

import httpx

log = logging.getLogger("crucible.serving.predlog")

MAX_BUFFER = 20_000
MAX_POST = 2_000
FLUSH_INTERVAL_S = 1.0


def records_of(
    request_id: str,
    model_id: str,
    instances: list[dict[str, Any]],
    answer: dict[str, Any],
    latency_ms: float,
) -> list[dict[str, Any]]:
    """One record per instance. Array values (images, sequences) are left out: drift and
    fairness are judged on tabular features, and a log of pixels would dwarf everything."""
    now = time.time()
    predictions = answer.get("predictions", [])
    probabilities = answer.get("probabilities")
    scores = answer.get("anomaly_scores")
    out = []
    for i, (instance, prediction) in enumerate(zip(instances, predictions, strict=False)):
        score: float | None = None
        if scores is not None:
            score = float(scores[i])
        elif probabilities is not None and len(probabilities[i]) == 2:
            score = float(list(probabilities[i].values())[1])
        out.append(
            {
                "request_id": request_id,
                "index": i,
                "model_id": model_id,
                "ts": now,
                "features": {k: v for k, v in instance.items() if not isinstance(v, list | dict)},
                "prediction": prediction,
                "score": score,
                "latency_ms": latency_ms,
            }
        )
    return out


class PredictionLog:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.sample_rate = 0.0
        self.url: str | None = None
        self.token: str | None = None
        self.dropped = 0
        self._buffer: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_BUFFER)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def configure(self, sample_rate: float, api_url: str | None, token: str | None) -> None:
        self.sample_rate = sample_rate
        path = f"/v1/internal/endpoints/{self.endpoint}/predictions"
        self.url = api_url.rstrip("/") + path if api_url else None
        self.token = token
        if self.url and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="predlog", daemon=True)
            self._thread.start()

    def sampled(self) -> bool:
        return self.url is not None and self.sample_rate > 0 and random.random() < self.sample_rate

    def add(self, records: list[dict[str, Any]]) -> None:
        overflow = len(self._buffer) + len(records) - MAX_BUFFER
        if overflow > 0:
            self.dropped += overflow
        self._buffer.extend(records)

    def _run(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while True:
                self._wake.wait(FLUSH_INTERVAL_S)
                self._wake.clear()
                self._flush(client)

    def _flush(self, client: httpx.Client) -> None:
        while self._buffer and self.url and self.token:
            batch = [self._buffer.popleft() for _ in range(min(MAX_POST, len(self._buffer)))]
            try:
                r = client.post(
                    self.url,
                    json={"records": batch},
                    headers={"Authorization": f"Bearer {self.token}"},
                )
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    # Refused as it is (a revoked endpoint, a record the API cannot take):
                    # sending it again would be refused again.
                    self.dropped += len(batch)
                    log.warning("prediction logs refused (%d): %s", r.status_code, r.text[:200])
                    continue
                r.raise_for_status()
            except httpx.HTTPError as exc:
                # Put them back in front and try again next tick; the API may be restarting.
                self._buffer.extendleft(reversed(batch))
                log.warning("prediction logs not sent (%s); %d waiting", exc, len(self._buffer))
                return
