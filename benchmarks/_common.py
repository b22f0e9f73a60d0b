"""Shared by the search benchmarks: a local Ray cluster and a collector for progress events."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from jobs.train import TrainData


class EventCollector:
    """Stands in for the API's event route: keeps every event a driver posts, with its time."""

    def __init__(self) -> None:
        import time

        self.events: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                for e in body["events"]:
                    e["received"] = now
                collector.events.extend(body["events"])
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def synthetic(n: int, features: int, seed: int = 0) -> TrainData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, features)) + y[:, None] * 0.3).astype(np.float32)
    cut = int(n * 0.8)
    return TrainData(x[:cut], y[:cut], x[cut:], y[cut:], n_classes=2)
