"""The API under load on PostgreSQL (issue 7): job submissions, the job list against a no-op
route, and a burst of concurrent submissions that must all be accounted for.

    .venv/bin/python -m benchmarks.api_load            # ~3 min
    .venv/bin/python -m benchmarks.api_load --quick    # smoke run, ~1 min

Every server is a uvicorn process of its own (``benchmarks/_api_server.py``), served alike;
the load comes from ``benchmarks/_loadgen.py`` in a process of its own (raw HTTP/1.1,
keep-alive, closed loop). The API runs on its own PostgreSQL database (``crucible_bench``,
dropped and created afresh; never the tests' ``test``) with Ray unreachable, so every
submission is validated, stored and queued but never launched (hundreds of real Ray jobs would
each start a driver importing torch). Phases:

1. burst: ``--burst`` (200) clients, each with its own distinct spec, connect first and then
   submit at once; no answer may be a 5xx, and the rows in the jobs table must equal the 202s
   (and be exactly their ids). A violation makes the exit status 1.
2. submissions: ``--clients`` (50) clients submit back to back; submissions/s, p50, p99.
3. ``GET /v1/jobs`` (a default page of 50) against ``GET /bench/noop`` of a bare FastAPI app,
   at the same client count, taking turns in rounds (A B ..., ... B A); the ratio list /
   no-op is printed (target >= 0.3). Beside them, to split the list's cost: the same no-op
   route inside the Crucible app (its middlewares alone), an empty page (token check, count)
   and a page of one.
4. Ray hung: a second API whose Ray dashboard accepts connections and never answers (a Ray
   head too busy to reply, or a proxy in front of a dead one); submissions must not wait for
   Ray's timeout each.

CPU milliseconds per request are read from /proc for the server process and for the
PostgreSQL backends serving ``crucible_bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from sqlalchemy.engine import make_url

from benchmarks._loadgen import LoadSpec, _read_response, spawn

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token"
SPEC = ROOT / "examples" / "adult.yaml"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_LIST_RATIO = 0.3


# --- the database ---------------------------------------------------------------------------


@contextmanager
def bench_database(admin_url: str, name: str, keep: bool) -> Iterator[str]:
    """A fresh database ``name`` beside ``admin_url``'s; yields its SQLAlchemy URL."""
    if name in ("test", "postgres") or not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing to drop and recreate database {name!r}")
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def libpq_url(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False)


def job_ids(sqlalchemy_url: str) -> list[str]:
    with psycopg.connect(libpq_url(sqlalchemy_url)) as c:
        return [row[0] for row in c.execute("SELECT id FROM jobs").fetchall()]


# --- CPU time from /proc --------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def postgres_backends(database: str) -> list[int]:
    """PostgreSQL's backend processes connected to ``database`` (on this machine)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("postgres: ") and f" {database} " in cmd:
            pids.append(int(entry))
    return pids


class CpuMeter:
    """CPU seconds used by the server process and the database's backends between marks."""

    def __init__(self, server_pid: int, database: str) -> None:
        self.server_pid = server_pid
        self.database = database

    def read(self) -> dict[str, float]:
        out = {"api": _cpu_of(self.server_pid), "postgres": 0.0}
        for pid in postgres_backends(self.database):
            with contextlib.suppress(OSError):  # a backend that just left
                out["postgres"] += _cpu_of(pid)
        return out

    @contextmanager
    def measure(self, into: dict[str, float]) -> Iterator[None]:
        before = self.read()
        yield
        for k, v in self.read().items():
            into[k] = into.get(k, 0.0) + max(0.0, v - before.get(k, 0.0))


# --- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    url: str
    pid: int
    log: Path


@contextmanager
def server(name: str, kind: str, logs: Path, *extra: str) -> Iterator[Server]:
    port = free_port()
    log = logs / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._api_server", kind, "--port", str(port), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/bench/noop", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Server(name, url, proc.pid, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def crucible_args(database_url: str, data_dir: Path, ray_url: str) -> list[str]:
    return [
        "--database-url",
        database_url,
        "--data-dir",
        str(data_dir),
        "--token",
        TOKEN,
        "--ray-url",
        ray_url,
    ]


class HungRay:
    """A "Ray dashboard" that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


# --- job specs ------------------------------------------------------------------------------


def spec_bodies(prefix: str, n: int) -> list[str]:
    """``n`` distinct submissions of examples/adult.yaml (as users send it: task left to be
    inferred from the data), differing in name and split seed."""
    base = yaml.safe_load(SPEC.read_text())
    out = []
    for i in range(n):
        spec = json.loads(json.dumps(base))
        spec["name"] = f"{prefix}-{i:04d}"
        spec["dataset"]["split"]["seed"] = i
        out.append(json.dumps(spec))
    return out


# --- phase 1: the burst ---------------------------------------------------------------------


@dataclass
class Burst:
    statuses: Counter[int]
    accepted_ids: list[str]
    latencies_ms: list[float]
    wall_s: float
    errors: list[str]


async def _burst(url: str, bodies: list[str]) -> Burst:
    host, _, port = url.removeprefix("http://").partition(":")
    conns = await asyncio.gather(*(asyncio.open_connection(host, int(port)) for _ in bodies))
    go = asyncio.Event()
    statuses: Counter[int] = Counter()
    ids: list[str] = []
    latencies: list[float] = []
    errors: list[str] = []

    async def one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], body: str) -> None:
        reader, writer = conn
        data = body.encode()
        request = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        await go.wait()
        t0 = time.perf_counter()
        try:
            writer.write(request)
            status, answer = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            statuses[0] += 1  # no answer at all
            return
        finally:
            writer.close()
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[status] += 1
        if status == 202:
            ids.append(json.loads(answer)["id"])
        elif len(errors) < 5:
            errors.append(f"{status} {answer[:300]!r}")

    tasks = [asyncio.create_task(one(c, b)) for c, b in zip(conns, bodies, strict=True)]
    await asyncio.sleep(0.2)  # every client is connected and waiting
    t0 = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return Burst(statuses, ids, latencies, time.perf_counter() - t0, errors)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- load runs ------------------------------------------------------------------------------


def load(
    url: str,
    bodies: list[str],
    clients: int,
    seconds: float,
    warmup: float,
    method: str = "GET",
    status: int = 200,
    expect: str | None = None,
) -> dict[str, Any]:
    spec = LoadSpec(
        url=url,
        bodies=bodies,
        token=TOKEN,
        clients=clients,
        seconds=seconds,
        warmup=warmup,
        expect=expect,
        method=method,
        status=status,
    )
    return spawn(spec, latencies=True)


def merged(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [x for r in rounds for x in r["latencies_ms"]]
    seconds = sum(r["seconds"] for r in rounds)
    return {
        "requests": len(lat),
        "errors": sum(r["errors"] for r in rounds),
        "answered": sum(r["answered"] for r in rounds),
        "rps": len(lat) / seconds,
        "p50_ms": pct(lat, 0.50),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat) if lat else float("nan"),
        "round_rps": [r["rps"] for r in rounds],
        "client_cpu_us": statistics.fmean(r["client_cpu_us_per_request"] for r in rounds),
        "first_error": next((r["first_error"] for r in rounds if r["first_error"]), None),
    }


def show(name: str, clients: int, r: dict[str, Any], cpu: dict[str, float] | None) -> None:
    print(
        f"  {name:<28} c={clients:<3} {r['rps']:8.1f}/s  p50 {r['p50_ms']:7.2f} ms"
        f"  p99 {r['p99_ms']:8.2f} ms  max {r['max_ms']:8.1f} ms  errors {r['errors']}",
        flush=True,
    )
    if r["round_rps"]:
        print("      rounds: " + " / ".join(f"{x:.0f}" for x in r["round_rps"]) + " req/s")
    if cpu:
        n = max(1, r["answered"])
        parts = ", ".join(f"{k} {v / n * 1000:.2f}" for k, v in cpu.items())
        print(f"      CPU ms per request: {parts}, load generator {r['client_cpu_us'] / 1000:.2f}")
    if r["first_error"]:
        print(f"      !! first error: {r['first_error']}")


def idle_cpu(meter: CpuMeter, seconds: float) -> dict[str, float]:
    """CPU ms per second the API and its database use with no request at all."""
    used: dict[str, float] = {}
    with meter.measure(used):
        time.sleep(seconds)
    return {k: v / seconds * 1000 for k, v in used.items()}


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, database_url: str, work: Path) -> bool:
    ok = True
    db_name = make_url(database_url).database or ""
    logs = work / "logs"
    logs.mkdir()
    refused = "http://127.0.0.1:9"  # nothing listens there: connection refused at once
    api_args = crucible_args(database_url, work / "api", refused)
    api_args += ["--no-reconcile"] if args.no_reconcile else []
    with (
        server("crucible", "crucible", logs, *api_args) as api,
        server("noop", "noop", logs) as bare,
    ):
        meter = CpuMeter(api.pid, db_name)
        cpu_bare = CpuMeter(bare.pid, db_name)
        print(f"API {api.url} (Ray unreachable: {refused}), bare FastAPI {bare.url}", flush=True)
        probe = httpx.post(
            f"{api.url}/v1/jobs",
            content=spec_bodies("probe", 1)[0],
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=60,
        )
        if probe.status_code != 202:
            raise RuntimeError(f"a submission was answered {probe.status_code}: {probe.text}")

        # 1. The burst, on a jobs table holding only the probe.
        print(f"\n== {args.burst} concurrent distinct submissions ==", flush=True)
        before = set(job_ids(database_url))
        burst = asyncio.run(_burst(api.url, spec_bodies("burst", args.burst)))
        rows = set(job_ids(database_url)) - before
        accepted = set(burst.accepted_ids)
        five = sum(n for s, n in burst.statuses.items() if s >= 500)
        print(
            f"  answers: {dict(sorted(burst.statuses.items()))} in {burst.wall_s:.2f} s "
            f"(p50 {pct(burst.latencies_ms, 0.5):.0f} ms, p99 {pct(burst.latencies_ms, 0.99):.0f}"
            f" ms, max {max(burst.latencies_ms, default=float('nan')):.0f} ms)"
        )
        print(f"  5xx: {five}; accepted (202): {len(accepted)}; new rows in jobs: {len(rows)}")
        for e in burst.errors[:5]:
            print(f"  !! {e}")
        burst_ok = five == 0 and not burst.statuses.get(0) and rows == accepted
        burst_ok = burst_ok and len(accepted) == len(burst.accepted_ids)
        if rows != accepted:
            print(
                f"  !! rows without a 202: {len(rows - accepted)}, "
                f"202s without a row: {len(accepted - rows)}"
            )
        print(f"  {'OK' if burst_ok else 'VIOLATED'}: no 5xx, rows = accepted", flush=True)
        ok = ok and burst_ok

        # 2. Submissions at --clients.
        print(f"\n== job submissions, {args.clients} clients ==", flush=True)
        bodies = spec_bodies("load", 512)
        got: list[dict[str, Any]] = []
        cpu: dict[str, float] = {}
        for _ in range(args.rounds):
            with meter.measure(cpu):
                got.append(
                    load(
                        f"{api.url}/v1/jobs",
                        bodies,
                        args.clients,
                        args.seconds / args.rounds,
                        args.warmup,
                        method="POST",
                        status=202,
                        expect='"queued"',
                    )
                )
        submissions = merged(got)
        show("POST /v1/jobs", args.clients, submissions, cpu)
        total = len(job_ids(database_url))
        print(f"  jobs in the table now: {total}", flush=True)

        # 3. The job list against the no-op route, in turns.
        print(f"\n== GET /v1/jobs against a no-op route, {args.clients} clients ==", flush=True)
        # Beside the two compared, where the list's time goes: the app's middlewares alone
        # (its no-op), then token check + count + an empty page, then one job, then the
        # default page of 50.
        sides: list[tuple[str, str, CpuMeter]] = [
            ("GET /v1/jobs", f"{api.url}/v1/jobs", meter),
            ("GET /bench/noop (bare)", f"{bare.url}/bench/noop", cpu_bare),
            ("GET /bench/noop (in app)", f"{api.url}/bench/noop", meter),
            ("GET /v1/jobs?status=running", f"{api.url}/v1/jobs?status=running", meter),
            ("GET /v1/jobs?limit=1", f"{api.url}/v1/jobs?limit=1", meter),
        ]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in sides}
        cpus: dict[str, dict[str, float]] = {name: {} for name, _, _ in sides}
        for k in range(args.rounds):
            for name, url, m in sides if k % 2 == 0 else sides[::-1]:
                with m.measure(cpus[name]):
                    runs[name].append(
                        load(url, [""], args.clients, args.seconds / args.rounds, args.warmup)
                    )
        results = {name: merged(rs) for name, rs in runs.items()}
        for name, _, _ in sides:
            show(name, args.clients, results[name], cpus[name])
        ratio = results["GET /v1/jobs"]["rps"] / results["GET /bench/noop (bare)"]["rps"]
        app_ratio = (
            results["GET /bench/noop (in app)"]["rps"] / results["GET /bench/noop (bare)"]["rps"]
        )
        empty_ratio = (
            results["GET /v1/jobs?status=running"]["rps"] / results["GET /bench/noop (bare)"]["rps"]
        )
        idle = idle_cpu(meter, 3.0)

    # 4. Ray hung: a submission must not wait for Ray's timeout each.
    print(f"\n== submissions with Ray hung, {args.hung_clients} clients ==", flush=True)
    hung = HungRay()
    try:
        with server(
            "crucible-hung", "crucible", logs, *crucible_args(database_url, work / "api", hung.url)
        ) as api_hung:
            hung_result = merged(
                [
                    load(
                        f"{api_hung.url}/v1/jobs",
                        spec_bodies("hung", 64),
                        args.hung_clients,
                        args.hung_seconds,
                        0.0,
                        method="POST",
                        status=202,
                        expect='"queued"',
                    )
                ]
            )
            show("POST /v1/jobs, Ray hung", args.hung_clients, hung_result, None)
    finally:
        hung.close()

    print("\n== summary ==")
    print(
        f"  submissions at {args.clients} clients: {submissions['rps']:.1f}/s, "
        f"p50 {submissions['p50_ms']:.1f} ms, p99 {submissions['p99_ms']:.1f} ms, "
        f"errors {submissions['errors']}"
    )
    verdict = "met" if ratio >= TARGET_LIST_RATIO else "NOT met"
    print(f"  GET /v1/jobs / no-op route: {ratio:.3f}  (target >= {TARGET_LIST_RATIO}: {verdict})")
    print(
        f"  no-op inside the app / bare: {app_ratio:.3f}; GET /v1/jobs / no-op inside the app: "
        f"{ratio / app_ratio:.3f}; empty page / bare: {empty_ratio:.3f}"
    )
    print(
        f"  burst of {args.burst}: 5xx {five}, accepted {len(accepted)}, rows {len(rows)}"
        f"  ({'OK' if burst_ok else 'VIOLATED'})"
    )
    print(
        f"  Ray hung: {hung_result['rps']:.1f} submissions/s, p50 {hung_result['p50_ms']:.1f} ms,"
        f" max {hung_result['max_ms']:.0f} ms ({hung_result['requests']} answered)"
    )
    print(
        "  idle API with "
        f"{total} queued jobs: CPU ms per second "
        + ", ".join(f"{k} {v:.0f}" for k, v in idle.items())
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smoke run (~1 min)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, per side")
    parser.add_argument("--rounds", type=int, default=2, help="turns per side (A B C, C B A)")
    parser.add_argument("--warmup", type=float, default=1.0, help="per round, unmeasured")
    parser.add_argument("--hung-clients", type=int, default=10)
    parser.add_argument("--hung-seconds", type=float, default=10.0)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, help="libpq URL, any database")
    parser.add_argument("--database", default="crucible_bench", help="dropped and recreated")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument(
        "--no-reconcile", action="store_true", help="the API without its reconciler thread"
    )
    args = parser.parse_args(argv)
    if args.quick:
        # Answers take a second or more at 50 clients: the window must be longer than that.
        args.seconds, args.rounds, args.warmup, args.hung_seconds = 4.0, 1, 2.0, 7.0
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="crucible-api-load-") as tmp,
        bench_database(args.admin_url, args.database, args.keep_database) as url,
    ):
        ok = run(args, url, Path(tmp))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
