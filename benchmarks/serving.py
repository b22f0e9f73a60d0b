"""Serving benchmark (issue 6, "Performance"): a promoted Crucible endpoint against plain
FastAPI + uvicorn holding the same bundle, and against the same model called in-process.

One process run. For each Serve mode (defaults; ``RAY_SERVE_ENABLE_HA_PROXY=1``; HAProxy plus
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) it starts its own local stack (Ray head + API, like
``crucible up``), trains through the API a small MLP on the built-in Adult set and a small CNN
on the built-in digits (one trial each), and promotes them:

  * ``mlp``: batching off, ``log_sample_rate`` 0;
  * ``mlp-log``: the same model with ``log_sample_rate`` 1 (last mode only: what logging costs);
  * ``cnn``: ``max_batch_size`` 32.

Beside it runs benchmarks/_fastapi_app.py: one uvicorn worker that loads the same bundles with
``jobs.bundle.load_bundle`` and answers like the replica (same token check, same validation,
same ``Predictor``). The load generator (benchmarks/_loadgen.py) runs in its own process:
N keep-alive connections sending requests back to back. Scenarios, Serve and FastAPI taking
turns so that the machine's drift hits both:

  * MLP, 1 row per request, 1 and 8 clients: req/s, p50, p99;
  * CNN, 1 image per request, 32 clients: samples/s, against an in-process batched forward
    (``Predictor.predict`` on 32 images, the same work without HTTP).

Where the time goes: each stage of the replica's work timed in-process (token hash, JSON
parse, validation, preprocessing, forward, answer, JSON render), and each Serve request's time
as the replica and Serve's proxy log it (matched by ``X-Request-ID``), against the client's.

    .venv/bin/python -m benchmarks.serving [--seconds 5] [--modes defaults,haproxy,haproxy-tput]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks._loadgen import LoadSpec, spawn
from jobs.bundle import Predictor, load_bundle
from jobs.datasets import BUILTIN
from services.client import Crucible
from services.serving.requests import authorized, instances_of
from services.stack import LocalStack, StackConfig

_TPUT = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
MODES: dict[str, dict[str, str]] = {
    "defaults": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "haproxy-tput": _TPUT,
    # Ray starts its workers (Serve's proxy and replicas among them) at niceness 15, below
    # the plain FastAPI process and everything else on a shared machine; this mode runs them
    # at 0 to show what that costs.
    "haproxy-tput-nice0": _TPUT | {"RAY_worker_niceness": "0"},
}
DEFAULT_MODES = ["defaults", "haproxy", "haproxy-tput"]

MLP_SPEC: dict[str, Any] = {
    "name": "serving-mlp",
    "dataset": {"id": "ds_builtin_adult", "target": "income"},
    "model": {"hidden_sizes": [64, 32]},
    "training": {"epochs": 1, "batch_size": 256},
    "search": {"num_trials": 1, "max_concurrent": 1},
}
CNN_SPEC: dict[str, Any] = {
    "name": "serving-cnn",
    "dataset": {"id": "ds_builtin_digits", "target": "digit"},
    "model": {"architecture": "cnn", "channels": [16, 32]},
    "training": {"epochs": 1, "batch_size": 32, "learning_rate": 0.003},
    "search": {"num_trials": 1, "max_concurrent": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def p50(xs: list[float]) -> float:
    return float(np.percentile(xs, 50))


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """Milliseconds per call of ``fn``, ``n`` calls after a few unmeasured ones."""
    for _ in range(min(20, n)):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


# --- the stack and its endpoints -----------------------------------------------------------


@dataclass
class Endpoint:
    url: str
    model_id: str
    bundle: Path
    digest: str


@dataclass
class Served:
    stack: LocalStack
    token: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)


def stack_env(mode: str, hap: Path) -> dict[str, str]:
    env = dict(MODES[mode])
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        # HAProxy's files and ports default to fixed places (/tmp/haproxy-serve, 8404, 9101,
        # a fallback proxy on 8500): give this stack its own, so it cannot meet another
        # HAProxy on the machine. ``hap`` must be a short path: Serve adds a 56-character
        # folder under it, and HAProxy refuses a socket path above 97 characters.
        hap.mkdir(exist_ok=True)
        env |= {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(hap / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(hap / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(hap),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(hap / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        }
    return env


@contextmanager
def served_stack(mode: str, with_logging: bool) -> Iterator[Served]:
    folder = Path(tempfile.mkdtemp(prefix="crucible-serving-"))
    hap = Path(tempfile.mkdtemp(prefix="chap-"))
    cfg = StackConfig(
        data_dir=folder,
        port=free_port(),
        ray_port=free_port(),
        dashboard_port=free_port(),
        serve_port=free_port(),
        client_server_port=free_port(),
        agent_port=free_port(),
        env=stack_env(mode, hap),
    )
    stack = LocalStack(cfg)
    t0 = time.perf_counter()
    stack.start()
    try:
        print(f"[{mode}] stack up in {time.perf_counter() - t0:.0f}s", flush=True)
        token = (folder / "token").read_text().strip()
        served = Served(stack, token)
        with Crucible(cfg.api_url, token) as client:
            t0 = time.perf_counter()
            jobs = {"mlp": client.submit_job(MLP_SPEC)["id"], "cnn": client.submit_job(CNN_SPEC)}
            jobs["cnn"] = jobs["cnn"]["id"]
            for job_id in jobs.values():
                final = client.wait(job_id, timeout=600, poll=0.5)
                assert final["status"] == "succeeded", final["error"]
            print(f"[{mode}] trained in {time.perf_counter() - t0:.0f}s", flush=True)
            plan = [
                ("mlp", jobs["mlp"], {"max_batch_size": 1, "log_sample_rate": 0}),
                # max_ongoing_requests above the batch size: a replica holds at most that many
                # requests (16 by default), so a batch could never fill to 32 below it.
                (
                    "cnn",
                    jobs["cnn"],
                    {"max_batch_size": 32, "max_ongoing_requests": 64, "log_sample_rate": 0},
                ),
            ]
            if with_logging:
                plan.append(("mlp-log", jobs["mlp"], {"max_batch_size": 1, "log_sample_rate": 1}))
            for name, job_id, serving in plan:
                t0 = time.perf_counter()
                r = httpx.post(
                    f"{cfg.api_url}/v1/jobs/{job_id}/promote",
                    json={"endpoint": name, "serving": serving},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=600,
                )
                assert r.status_code == 200, r.text
                promo = r.json()
                model = client.model(promo["model_id"])
                bundle = next(folder.rglob(f"jobs/{job_id}/model/bundle.json")).parent
                served.endpoints[name] = Endpoint(
                    promo["url"], promo["model_id"], bundle, model["bundle_digest"]
                )
                print(f"[{mode}] promoted {name} in {time.perf_counter() - t0:.0f}s", flush=True)
        yield served
    finally:
        stack.stop()
        shutil.rmtree(hap, ignore_errors=True)


@contextmanager
def fastapi_app(served: Served) -> Iterator[tuple[str, int]]:
    port = free_port()
    models = [
        f"{name}={e.bundle}:{e.digest}:{e.model_id}"
        for name, e in served.endpoints.items()
        if name in ("mlp", "cnn")
    ]
    cmd = [sys.executable, "-m", "benchmarks._fastapi_app", f"--port={port}"]
    cmd += ["--token-hash", hashlib.sha256(served.token.encode()).hexdigest()]
    for m in models:
        cmd += ["--model", m]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the FastAPI app exited with {proc.returncode}")
            try:
                if httpx.post(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the FastAPI app did not start in 120s")
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


def direct_ingress_urls(stack: LocalStack, endpoint: str) -> list[str]:
    """In HAProxy mode each replica serves HTTP on a port of its own (bound to the node's
    address: on a cluster, reachable from the network without HAProxy), beside a fallback
    proxy; both are the servers of the endpoint's backend in HAProxy's generated config."""
    hap = Path(stack.cfg.env.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "/nonexistent"))
    urls = set()
    for cfg in hap.rglob("haproxy.cfg"):
        backend = None
        for line in cfg.read_text().splitlines():
            words = line.split()
            if words[:1] == ["backend"]:
                backend = words[1]
            elif words[:1] == ["server"] and backend and backend.startswith(f"http-{endpoint}--"):
                urls.add(f"http://{words[2]}/{endpoint}")
    return sorted(urls)


# --- inside the replica, in-process ----------------------------------------------------------


def stage_times(predictor: Predictor, rows: list[dict[str, Any]], token: str) -> dict[str, float]:
    """p50 (ms) of each step of the replica's answer to a one-row request, done in-process."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    body = json.dumps({"instances": rows[:1]}).encode()
    hashes = frozenset([hashlib.sha256(token.encode()).hexdigest()])
    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    request = Request(scope)
    instances = instances_of(json.loads(body))
    columns = predictor.preprocessor.columns_from_records(instances)
    x = torch.from_numpy(predictor.preprocessor.transform(columns))
    codes, probs = predictor.predict_columns(columns)
    answer = {**predictor._answer(instances, codes, probs), "model_id": "m", "request_id": "r"}

    def forward() -> None:
        with torch.inference_mode():
            torch.softmax(predictor.model(x), dim=1).numpy()

    n = 2000
    return {
        "token check (sha256)": p50(timed(lambda: authorized(request, hashes), n)),
        "JSON parse": p50(timed(lambda: json.loads(body), n)),
        "validation (columns_from_records)": p50(
            timed(
                lambda: predictor.preprocessor.columns_from_records(instances_of(json.loads(body))),
                n,
            )
        )
        - p50(timed(lambda: json.loads(body), n)),
        "preprocessing (transform)": p50(
            timed(lambda: predictor.preprocessor.transform(columns), n)
        ),
        "forward + softmax": p50(timed(forward, n)),
        "answer (labels, probabilities)": p50(
            timed(lambda: predictor._answer(instances, codes, probs), n)
        ),
        "JSON render": p50(timed(lambda: JSONResponse(answer), n)),
    }


@dataclass
class InProcess:
    mlp_predict_p50_ms: float
    cnn_predict1_p50_ms: float
    cnn_batch32_samples_s: float
    cnn_forward32_samples_s: float
    stages: dict[str, float]


def in_process(
    served: Served, mlp_rows: list[dict[str, Any]], images: list[dict[str, Any]]
) -> InProcess:
    # One thread, as the Serve replica (Ray sets OMP_NUM_THREADS=1 for an actor without CPUs)
    # and the FastAPI baseline run it.
    torch.set_num_threads(1)
    mlp = load_bundle(served.endpoints["mlp"].bundle, served.endpoints["mlp"].digest)
    cnn = load_bundle(served.endpoints["cnn"].bundle, served.endpoints["cnn"].digest)
    i = iter(range(10**9))
    mlp_p50 = p50(timed(lambda: mlp.predict([mlp_rows[next(i) % len(mlp_rows)]]), 3000))
    cnn1 = p50(timed(lambda: cnn.predict([images[next(i) % len(images)]]), 1000))
    batch = images[:32]
    per_batch = statistics.median(timed(lambda: cnn.predict(batch), 300))
    columns = cnn.preprocessor.columns_from_records(batch)
    x = torch.from_numpy(cnn.preprocessor.transform(columns))

    def forward() -> None:
        with torch.inference_mode():
            cnn.model(x)

    per_forward = statistics.median(timed(forward, 300))
    return InProcess(
        mlp_p50,
        cnn1,
        32 / per_batch * 1000,
        32 / per_forward * 1000,
        stage_times(mlp, mlp_rows, served.token),
    )


# --- CPU time per request, by process ----------------------------------------------------
# On a shared 2-core machine wall-clock figures move with everyone else's load; the CPU time
# each process spends per request moves much less, and says which part costs what.

_CLK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            children.setdefault(st[0], []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def component(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "ServeReplica:" in cmd:
        # "ray::ServeReplica:<endpoint>--<model id>:ModelServer"
        return "replica " + cmd.split("ServeReplica:")[1].split("--")[0]
    if "ProxyActor" in cmd:
        return "Serve proxy"
    if "HAProxyManager" in cmd:
        return "HAProxy manager"
    if Path(cmd.split(" ")[0]).name == "haproxy":
        return "HAProxy"
    return "other Ray"


def serve_processes(stack: LocalStack) -> dict[int, str]:
    assert stack.ray is not None and stack.api is not None
    procs = {pid: component(pid) for pid in descendants(stack.ray.pid)}
    procs |= {pid: "API" for pid in descendants(stack.api.pid)}
    return procs


def cpu_seconds(procs: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, name in procs.items():
        if (st := _stat(pid)) is not None:
            out[name] = out.get(name, 0.0) + st[1]
    return out


# --- Serve's own request logs ----------------------------------------------------------------

_LOG_LINE = re.compile(r" (\S+) -- POST \S+ (\d{3}) ([\d.]+)ms\s*$")


def logged_ms(stack: LocalStack, kind: str, prefix: str) -> list[float]:
    """Latencies Serve logged (replica_*.log or proxy_*.log) for requests whose X-Request-ID
    starts with ``prefix``."""
    folder = stack.ray_temp_dir / "session_latest" / "logs" / "serve"
    out = []
    for f in folder.glob(f"{kind}_*.log"):
        for line in f.read_text(errors="replace").splitlines():
            m = _LOG_LINE.search(line)
            if m and m.group(1).startswith(prefix + "-") and m.group(2) == "200":
                out.append(float(m.group(3)))
    return out


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Row:
    mode: str
    server: str
    scenario: str
    clients: int
    result: dict[str, Any]
    replica_p50_ms: float | None = None
    proxy_p50_ms: float | None = None
    logged: int = 0  # requests of the run found in the replica's log
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU ms per request, by process


def load(
    url: str,
    bodies: list[str],
    token: str,
    clients: int,
    seconds: float,
    warmup: float,
    prefix: str,
) -> dict[str, Any]:
    spec = LoadSpec(
        url=url,
        bodies=bodies,
        token=token,
        clients=clients,
        seconds=seconds,
        warmup=warmup,
        expect='"predictions"',
        request_id_prefix=prefix,
    )
    r = spawn(spec, latencies=True)
    if r["errors"]:
        print(f"  !! {r['errors']} errors, first: {r['first_error']}", flush=True)
    return r


def merged(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result of several rounds: counts add up, percentiles over all their latencies."""
    lat = sorted(x for r in rounds for x in r["latencies_ms"])
    n, seconds = len(lat), sum(r["seconds"] for r in rounds)
    requests = sum(r["requests"] for r in rounds)
    return {
        "requests": requests,
        "errors": sum(r["errors"] for r in rounds),
        "seconds": seconds,
        "rps": requests / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if n else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if n else float("nan"),
        "answered": sum(r["answered"] for r in rounds),
        "client_cpu_us_per_request": statistics.fmean(
            r["client_cpu_us_per_request"] for r in rounds
        ),
        "first_error": next((r["first_error"] for r in rounds if r["first_error"]), None),
        "round_rps": [r["rps"] for r in rounds],
    }


def show(row: Row) -> None:
    r = row.result
    extra = ""
    if row.replica_p50_ms is not None:
        extra = f"  (replica logs p50 {row.replica_p50_ms:.2f} ms of {row.logged}"
        if row.proxy_p50_ms is not None:
            extra += f", proxy logs p50 {row.proxy_p50_ms:.2f} ms"
        extra += ")"
    print(
        f"  {row.mode:<13} {row.server:<9} {row.scenario:<8} c={row.clients:<3}"
        f" {r['rps']:8.1f}/s  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms"
        f"  errors {r['errors']}{extra}",
        flush=True,
    )
    print(
        "      rounds: " + " / ".join(f"{x:.0f}" for x in r.get("round_rps", [])) + " req/s",
        flush=True,
    )
    if row.cpu_ms:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row.cpu_ms.items()) if v >= 0.005)
        print(f"      CPU ms per request: {parts}", flush=True)


def run_mode(
    mode: str,
    first: bool,
    last: bool,
    args: argparse.Namespace,
    mlp_bodies: list[str],
    cnn_bodies: list[str],
    mlp_rows: list[dict[str, Any]],
    images: list[dict[str, Any]],
) -> tuple[list[Row], InProcess, dict[str, Any] | None]:
    rows: list[Row] = []
    ceiling: dict[str, Any] | None = None
    # What logging costs is measured on the last mode (the fastest of the default list), where
    # Serve's own overhead hides it least.
    with served_stack(mode, with_logging=last) as served, fastapi_app(served) as (fast, fast_pid):
        tok = served.token
        ep = served.endpoints
        direct = direct_ingress_urls(served.stack, "mlp")
        if direct:
            print(f"  [{mode}] replicas' own HTTP ports (HAProxy's servers): {direct}", flush=True)
        # The token check holds on every mode's serving port (HAProxy binds all interfaces).
        for url in (ep["mlp"].url, f"{fast}/mlp", *direct):
            code = httpx.post(url, json={"instances": mlp_rows[:1]}, timeout=30).status_code
            assert code == 401, f"{url} answered {code} without a token"
        # What the stack burns with no request at all (controller loops, health checks,
        # metrics): part of every per-request CPU figure below, fixed per second.
        procs = serve_processes(served.stack)
        before = cpu_seconds(procs)
        time.sleep(3.0)
        idle = {k: (v - before.get(k, 0.0)) / 3.0 * 1000 for k, v in cpu_seconds(procs).items()}
        parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(idle.items()) if v >= 0.5)
        print(f"  [{mode}] idle stack, CPU ms per second: {parts}", flush=True)
        # In-process figures in every mode's own run: the machine's load moves between modes.
        inproc = in_process(served, mlp_rows, images)
        if first:
            ceiling = spawn(
                LoadSpec(
                    url=f"{fast}/ping",
                    bodies=["{}"],
                    clients=8,
                    seconds=args.seconds,
                    warmup=args.warmup,
                )
            )
            print(
                f"  load generator vs a trivial endpoint: {ceiling['rps']:.0f} req/s, "
                f"{ceiling['client_cpu_us_per_request']:.0f} us of client CPU per request",
                flush=True,
            )
        # (scenario, clients, bodies, [(server, url)]): each scenario's servers take turns in
        # short rounds (A B, then B A, ...), so that the machine's drift hits both alike.
        plan: list[tuple[str, int, list[str], list[tuple[str, str]]]] = [
            ("mlp", 1, mlp_bodies, [("fastapi", f"{fast}/mlp"), ("serve", ep["mlp"].url)]),
            ("mlp", 8, mlp_bodies, [("fastapi", f"{fast}/mlp"), ("serve", ep["mlp"].url)]),
            ("cnn", 32, cnn_bodies, [("fastapi", f"{fast}/cnn"), ("serve", ep["cnn"].url)]),
        ]
        if "mlp-log" in ep:
            # The same model logging every request, in turns with the one that logs none.
            plan[1][3].append(("serve-log", ep["mlp-log"].url))
        for scenario, clients, bodies, servers in plan:
            got: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in servers}
            cpu: dict[str, dict[str, float]] = {name: {} for name, _ in servers}
            for k in range(args.rounds):
                for server, url in servers if k % 2 == 0 else servers[::-1]:
                    prefix = f"{mode}.{server}.{scenario}.c{clients}"
                    procs = (
                        {fast_pid: "FastAPI"}
                        if server == "fastapi"
                        else serve_processes(served.stack)
                    )
                    before = cpu_seconds(procs)
                    got[server].append(
                        load(
                            url,
                            bodies,
                            tok,
                            clients,
                            args.seconds / args.rounds,
                            args.warmup,
                            prefix,
                        )
                    )
                    for name, t in cpu_seconds(procs).items():
                        if name != "gone":
                            used = t - before.get(name, 0.0)
                            cpu[server][name] = cpu[server].get(name, 0.0) + used
            for server, _ in servers:
                result = merged(got[server])
                row = Row(mode, server, scenario, clients, result)
                n = max(1, result["answered"])
                row.cpu_ms = {k: v / n * 1000 for k, v in cpu[server].items()}
                row.cpu_ms["load generator"] = result["client_cpu_us_per_request"] / 1000
                if server != "fastapi":
                    time.sleep(1.0)  # Serve's log handlers flush in the background
                    prefix = f"{mode}.{server}.{scenario}.c{clients}"
                    replica = logged_ms(served.stack, "replica", prefix)
                    proxy = logged_ms(served.stack, "proxy", prefix)
                    row.logged = len(replica)
                    row.replica_p50_ms = p50(replica) if replica else None
                    row.proxy_p50_ms = p50(proxy) if proxy else None
                show(row)
                rows.append(row)
    return rows, inproc, ceiling


def find(rows: list[Row], mode: str, server: str, scenario: str, clients: int) -> dict[str, Any]:
    for r in rows:
        if (r.mode, r.server, r.scenario, r.clients) == (mode, server, scenario, clients):
            return r.result
    raise KeyError((mode, server, scenario, clients))


def report(
    rows: list[Row],
    inprocs: dict[str, InProcess],
    ceiling: dict[str, Any] | None,
    modes: list[str],
) -> None:
    for mode in modes:
        inproc = inprocs[mode]
        print(f"\n== in-process, one thread, during the {mode} run ==")
        print(f"  MLP Predictor.predict, 1 row: p50 {inproc.mlp_predict_p50_ms:.3f} ms")
        print(f"  CNN Predictor.predict, 1 image: p50 {inproc.cnn_predict1_p50_ms:.3f} ms")
        print(f"  CNN Predictor.predict, batch 32: {inproc.cnn_batch32_samples_s:.0f} samples/s")
        print(f"  CNN forward only, batch 32: {inproc.cnn_forward32_samples_s:.0f} samples/s")
        print("  MLP one-row request, the replica's steps (p50 ms):")
        for k, v in inproc.stages.items():
            print(f"    {k:<34} {v:.3f}")
        print(f"    {'sum':<34} {sum(inproc.stages.values()):.3f}")
    if ceiling is not None:
        print(
            f"\n== load generator ceiling: {ceiling['rps']:.0f} req/s against FastAPI /ping "
            f"(8 clients, server-bound on 2 cores); {ceiling['client_cpu_us_per_request']:.0f} us "
            f"client CPU per request -> ~{1e6 / ceiling['client_cpu_us_per_request']:.0f} req/s "
            "on a core of its own =="
        )
    print("\n== ratios against issue 6's targets ==")
    for mode in modes:
        inproc = inprocs[mode]
        f8 = find(rows, mode, "fastapi", "mlp", 8)
        s8 = find(rows, mode, "serve", "mlp", 8)
        s1 = find(rows, mode, "serve", "mlp", 1)
        f1 = find(rows, mode, "fastapi", "mlp", 1)
        fc = find(rows, mode, "fastapi", "cnn", 32)
        sc = find(rows, mode, "serve", "cnn", 32)
        added = s1["p50_ms"] - inproc.mlp_predict_p50_ms
        checks = [
            (
                "req/s at 8 clients vs FastAPI",
                s8["rps"] / f8["rps"],
                ">= 0.90",
                s8["rps"] / f8["rps"] >= 0.9,
            ),
            (
                "p99 at 8 clients vs FastAPI",
                s8["p99_ms"] / f8["p99_ms"],
                "<= 1.50",
                s8["p99_ms"] / f8["p99_ms"] <= 1.5,
            ),
            (
                "CNN samples/s at 32 vs FastAPI",
                sc["rps"] / fc["rps"],
                "> 1.00",
                sc["rps"] > fc["rps"],
            ),
            (
                "CNN samples/s at 32 vs in-process batch 32",
                sc["rps"] / inproc.cnn_batch32_samples_s,
                ">= 0.70",
                sc["rps"] / inproc.cnn_batch32_samples_s >= 0.7,
            ),
            (
                "  (the same, vs the batch's forward alone)",
                sc["rps"] / inproc.cnn_forward32_samples_s,
                ">= 0.70",
                sc["rps"] / inproc.cnn_forward32_samples_s >= 0.7,
            ),
            ("added p50 at 1 client over in-process (ms)", added, "<= 1.50", added <= 1.5),
        ]
        print(f"  [{mode}]")
        for name, value, target, ok in checks:
            print(f"    {name:<44} {value:7.2f}  target {target}  {'met' if ok else 'NOT met'}")
        print(
            f"    (FastAPI's own added p50 at 1 client: "
            f"{f1['p50_ms'] - inproc.mlp_predict_p50_ms:.2f} ms)"
        )
        try:
            lg = find(rows, mode, "serve-log", "mlp", 8)
            ratio = lg["rps"] / s8["rps"]
            print(
                f"    logging every request (log_sample_rate 1): {ratio:.2f}x the req/s of rate 0"
            )
        except KeyError:
            pass
    print("\n== server CPU ms per request (all its processes; the load generator apart) ==")
    for mode in modes:
        for scenario, clients in (("mlp", 1), ("mlp", 8), ("cnn", 32)):
            for r in rows:
                if (r.mode, r.scenario, r.clients) != (mode, scenario, clients):
                    continue
                server = {k: v for k, v in r.cpu_ms.items() if k != "load generator"}
                parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(server.items()) if v >= 0.005)
                print(
                    f"  {mode:<13} {r.server:<9} {scenario:<8} c={clients:<3}"
                    f" total {sum(server.values()):5.2f}  ({parts})"
                )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per server and scenario"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument(
        "--rounds", type=int, default=2, help="turns each server takes per scenario (A B, B A...)"
    )
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help="comma-separated, of: " + ", ".join(MODES),
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}")
    t_all = time.perf_counter()
    adult = pq.read_table(BUILTIN["adult"].path)
    mlp_rows = adult.slice(len(adult) - 256).drop(["income"]).to_pylist()
    images = pq.read_table(BUILTIN["digits"].path).slice(0, 256).drop(["digit"]).to_pylist()
    mlp_bodies = [json.dumps({"instances": [r]}) for r in mlp_rows]
    cnn_bodies = [json.dumps({"instances": [r]}) for r in images]
    rows: list[Row] = []
    inprocs: dict[str, InProcess] = {}
    ceiling: dict[str, Any] | None = None
    for k, mode in enumerate(modes):
        last = k == len(modes) - 1
        got, inprocs[mode], ceil = run_mode(
            mode, k == 0, last, args, mlp_bodies, cnn_bodies, mlp_rows, images
        )
        rows += got
        ceiling = ceiling or ceil
    report(rows, inprocs, ceiling, modes)
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")


if __name__ == "__main__":
    main()
