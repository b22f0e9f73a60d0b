"""The serving benchmark's load generator against a local HTTP server: it counts answers,
times them, counts errors apart, and reads both fixed-length and chunked bodies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from benchmarks._loadgen import LoadSpec, run


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the generator expects
    seen: ClassVar[list[tuple[str, str | None, str | None]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))  # the request must be read whole
        Handler.seen.append(
            (self.path, self.headers.get("authorization"), self.headers.get("x-request-id"))
        )
        if self.path == "/fail":
            self._send(500, b'{"error": "boom"}')
        elif self.path == "/accepted":
            self._send(202, b'{"id": "job_1", "status": "queued"}')
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b'{"predictions": ', b"[1]}"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(200, b'{"predictions": [1]}')

    def do_GET(self) -> None:
        assert "content-length" not in self.headers  # a GET carries no body
        self._send(200, b'{"items": []}')

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def spec(url: str, **kw: Any) -> LoadSpec:
    base: dict[str, Any] = {
        "bodies": ['{"instances": [1]}', '{"instances": [2]}'],
        "token": "tok",
        "clients": 2,
        "seconds": 0.4,
        "warmup": 0.1,
        "expect": '"predictions"',
    }
    return LoadSpec(url=url, **(base | kw))


@pytest.mark.parametrize("path", ["/ok", "/chunked"])
def test_answers_are_counted_and_timed(server: str, path: str) -> None:
    Handler.seen.clear()
    r = run(spec(server + path, request_id_prefix="t"))
    assert r.errors == 0 and r.first_error is None
    assert r.requests > 10
    assert r.rps == pytest.approx(r.requests / 0.4)
    assert 0 < r.p50_ms <= r.p99_ms < 1000
    assert r.client_cpu_us_per_request > 0
    assert all(auth == "Bearer tok" for _, auth, _ in Handler.seen)
    ids = [rid for _, _, rid in Handler.seen]
    assert all(rid is not None and rid.startswith("t-") for rid in ids)
    assert len(set(ids)) == len(ids)


def test_errors_and_unexpected_answers_are_not_results(server: str) -> None:
    r = run(spec(server + "/fail"))
    assert r.requests == 0 and r.errors > 0
    assert r.first_error is not None and r.first_error.startswith("500")
    r = run(spec(server + "/ok", expect='"nothing like this"'))
    assert r.requests == 0 and r.errors > 0


def test_gets_and_other_statuses_of_success(server: str) -> None:
    r = run(spec(server + "/jobs", method="GET", bodies=[""], expect='"items"'))
    assert r.errors == 0 and r.requests > 10
    r = run(spec(server + "/accepted", status=202, expect='"queued"'))
    assert r.errors == 0 and r.requests > 10
    r = run(spec(server + "/ok", status=202))  # a 200 where a 202 is the answer: an error
    assert r.requests == 0 and r.errors > 0
