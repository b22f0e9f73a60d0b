"""A closed-loop HTTP load generator for the serving benchmark, run in a process of its own.

``clients`` keep-alive connections each send POSTs (or GETs) back to back for ``seconds`` (after
``warmup`` seconds that are not counted) and time every answer. It speaks just enough HTTP/1.1
over asyncio streams (uvloop when installed) to stay cheap: on a 2-core machine every
microsecond the client spends is taken from the server it measures, and a general client such
as httpx costs several times more per request. Its own CPU time per request is reported, so the
ceiling it puts on any figure is known.

    python -m benchmarks._loadgen '<json arguments>'   # prints one JSON result line
    python -m benchmarks._loadgen - < arguments.json
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoadSpec:
    url: str  # http://host:port/path
    bodies: list[str]  # request bodies, sent in turn
    token: str | None = None
    clients: int = 1
    seconds: float = 5.0
    warmup: float = 1.0
    # Every answer must contain this (e.g. '"predictions"'): a fast error is not a result.
    expect: str | None = None
    # Sent as X-Request-ID "<prefix>-<n>", so server-side logs can be matched to this run.
    request_id_prefix: str | None = None
    method: str = "POST"  # a GET sends no body (pass bodies=[""])
    status: int = 200  # the status of an answer that counts (202 for a job submission)


@dataclass
class LoadResult:
    requests: int  # answered within the measured window
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu_us_per_request: float
    # Every answer, warm-up included: what the server did for the whole run (its CPU time
    # over the run is divided by this).
    answered: int = 0
    first_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)


def _split_url(url: str) -> tuple[str, int, str]:
    assert url.startswith("http://"), url
    rest = url[len("http://") :]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    return host, int(port or 80), "/" + path


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if not chunked:
        raise RuntimeError(f"response without a length: {head[:200]!r}")
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _run(spec: LoadSpec) -> LoadResult:
    host, port, path = _split_url(spec.url)
    auth = f"Authorization: Bearer {spec.token}\r\n" if spec.token else ""
    # Everything but the request id is fixed: build those bytes once per body.
    with_body = spec.method != "GET"
    heads = [
        (
            f"{spec.method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
            + (
                f"Content-Type: application/json\r\nContent-Length: {len(b.encode())}\r\n"
                if with_body
                else ""
            )
        ).encode()
        for b in spec.bodies
    ]
    payloads = [b.encode() if with_body else b"" for b in spec.bodies]
    expect = spec.expect.encode() if spec.expect else None
    prefix = spec.request_id_prefix
    latencies: list[int] = []
    errors = 0
    first_error: list[str] = []
    counter = 0
    answered = 0
    t_start = time.perf_counter()
    t_measure = t_start + spec.warmup
    t_end = t_measure + spec.seconds
    cpu_marks: dict[str, float] = {}

    async def client(k: int) -> None:
        nonlocal errors, counter, answered
        reader, writer = await asyncio.open_connection(host, port)
        i = k
        try:
            while True:
                j = i % len(payloads)
                i += 1
                counter += 1
                rid = f"X-Request-ID: {prefix}-{counter}\r\n".encode() if prefix else b""
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                writer.write(heads[j] + rid + b"\r\n" + payloads[j])
                status, body = await _read_response(reader)
                t1 = time.perf_counter()
                answered += 1
                # An answer counts when it arrives within the window, whenever it was asked
                # for: with seconds-long answers (50 clients queueing on a slow route),
                # counting only those asked within it would leave out one latency's worth.
                if t1 < t_measure:
                    continue
                if t1 > t_end:
                    return
                if status != spec.status or (expect is not None and expect not in body):
                    errors += 1
                    if not first_error:
                        first_error.append(f"{status} {body[:300]!r}")
                    continue
                latencies.append(int((t1 - t0) * 1e9))
        finally:
            writer.close()

    async def cpu_mark(at: float, name: str) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        cpu_marks[name] = time.process_time()

    await asyncio.gather(
        *(client(k) for k in range(spec.clients)),
        cpu_mark(t_measure, "start"),
        cpu_mark(t_end, "end"),
    )
    n = len(latencies)
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1e6 if n else float("nan")

    cpu = cpu_marks.get("end", time.process_time()) - cpu_marks.get("start", 0.0)
    return LoadResult(
        requests=n,
        errors=errors,
        seconds=spec.seconds,
        rps=n / spec.seconds,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        mean_ms=sum(latencies) / n / 1e6 if n else float("nan"),
        client_cpu_us_per_request=cpu / max(1, n + errors) * 1e6,
        answered=answered,
        first_error=first_error[0] if first_error else None,
        latencies_ms=[x / 1e6 for x in latencies] if n <= 200_000 else [],
    )


def run(spec: LoadSpec) -> LoadResult:
    try:
        import uvloop

        return uvloop.run(_run(spec))
    except ImportError:
        return asyncio.run(_run(spec))


def main() -> None:
    # "-": the spec on stdin (many bodies overflow an argument).
    spec = LoadSpec(**json.loads(sys.stdin.read() if sys.argv[1] == "-" else sys.argv[1]))
    result = asdict(run(spec))
    if sys.argv[2:] == ["latencies"]:
        result["latencies_ms"] = [round(x, 4) for x in result["latencies_ms"]]
    else:
        result.pop("latencies_ms")
    print(json.dumps(result))


def spawn(spec: LoadSpec, latencies: bool = False) -> dict[str, Any]:
    """Run ``spec`` in a fresh process (so the generator has a core to itself, not a thread
    of the caller's) and return its result; with ``latencies``, every measured latency too."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "benchmarks._loadgen", "-"] + (["latencies"] if latencies else []),
        input=json.dumps(asdict(spec)),
        capture_output=True,
        text=True,
        timeout=spec.warmup + spec.seconds + 120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    main()
