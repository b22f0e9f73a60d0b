"""A database outage on a real PostgreSQL of the test's own: while it is down the API answers
503 with Retry-After (never 500) and stays up; once it is back, the API recovers by itself
within 10 s and nothing it acknowledged before is lost.

The shared PostgreSQL of the machine is left alone: this test starts a private server
(initdb in a temporary folder, a free port) so that stopping it harms no other test.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select

from services.api.app import create_app
from services.config import Settings
from services.core.auth import job_token
from services.core.datasets import builtin_id
from services.store.models import Job, JobEvent

TOKEN = "outage-admin-token"


@dataclass
class PrivatePostgres:
    bin: Path
    data: Path
    port: int
    user: str | None

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data / "db"),
            "-o",
            opts,
            "-w",
            "-l",
            str(self.data / "log"),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data / "db"), "-m", mode, "-w", "stop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing (apt install postgresql)")
        pytest.skip("no PostgreSQL server binaries here")
    # PostgreSQL refuses to run as root; as root, run it as the postgres user.
    user = "postgres" if os.geteuid() == 0 else None
    # Not under pytest's temporary folders: they are private to root, out of postgres' reach.
    data = Path(tempfile.mkdtemp(prefix="crucible-pg-"))
    if user:
        shutil.chown(data, user)
    pg = PrivatePostgres(Path(bins[-1]).parent, data, _free_port(), user)
    pg._run("initdb", "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    pg.start()
    try:
        yield pg
    finally:
        stop = [str(pg.bin / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"]
        subprocess.run(["runuser", "-u", user, "--", *stop] if user else stop, capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_an_outage_is_503_and_the_api_recovers_by_itself(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres.url,
        bootstrap_token=TOKEN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens: jobs stay queued
    )
    h = {"Authorization": f"Bearer {TOKEN}"}
    spec = {"name": "kept", "dataset": {"id": builtin_id("adult"), "target": "income"}}
    with TestClient(create_app(settings, reconcile=False), raise_server_exceptions=False) as c:
        r = c.post("/v1/jobs", json=spec, headers=h)
        assert r.status_code == 202, r.text
        acknowledged = r.json()["id"]

        postgres.stop()
        for method, path, body in (
            ("GET", "/v1/jobs", None),
            ("GET", f"/v1/jobs/{acknowledged}", None),
            ("POST", "/v1/jobs", spec),
            ("GET", "/v1/datasets", None),
        ):
            r = c.request(method, path, json=body, headers=h)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers["retry-after"] and r.json()["error"] == "unavailable"
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200  # the process is alive; not ready

        postgres.start()
        back = time.monotonic()
        while c.get("/v1/jobs", headers=h).status_code != 200:
            assert time.monotonic() - back < 10, "the API did not recover within 10 s"
            time.sleep(0.2)
        jobs = c.get("/v1/jobs", headers=h).json()["items"]
        assert [j["id"] for j in jobs] == [acknowledged]  # kept; the refused one never existed
        assert c.get("/readyz").status_code == 200


@dataclass
class Outcome:
    """One request of the load: what it carried and how the API answered."""

    kind: str  # "job" or "events"
    status: int
    at: float
    ids: list[str]  # the job created, or the event keys posted


def test_a_restart_under_load_keeps_every_acknowledged_write(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """Jobs submitted and events posted without pause while PostgreSQL crashes and restarts:
    each request is answered 2xx or 503, never 500; whatever was answered 2xx is stored; the API
    serves again by itself once the server is back."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=postgres.url,
        bootstrap_token=TOKEN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens: jobs stay queued
        rate_limit_per_minute=0,
    )
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, reconcile=False), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    h = {"Authorization": f"Bearer {TOKEN}"}
    spec = {"name": "load", "dataset": {"id": builtin_id("adult"), "target": "income"}}
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
            time.sleep(0.05)
        target = httpx.post(f"{url}/v1/jobs", json=spec, headers=h).json()["id"]
        internal = {"Authorization": f"Bearer {job_token(settings.resolved_secret_key, target)}"}
        outcomes: list[Outcome] = []
        stop = threading.Event()

        def submit(worker: int) -> None:
            """Worker 0 submits; worker 1 retries each refused submission with its
            Idempotency-Key until one is acknowledged, as the CLI's users would."""
            with httpx.Client(base_url=url, headers=h, timeout=30) as http:
                for n in itertools.count():
                    name = f"load-{worker}-{n}"
                    keyed = {"Idempotency-Key": name} if worker == 1 else {}
                    while not stop.is_set():
                        r = http.post("/v1/jobs", json={**spec, "name": name}, headers=keyed)
                        ok = r.status_code < 300
                        ids = [r.json()["id"]] if ok else []
                        outcomes.append(Outcome("job", r.status_code, time.monotonic(), ids))
                        if ok or not keyed:
                            break
                        time.sleep(0.05)
                    if stop.is_set():
                        return

        def post_events(worker: int) -> None:
            with httpx.Client(base_url=url, headers=internal, timeout=30) as http:
                for n in itertools.count(1):
                    if stop.is_set():
                        return
                    events: list[dict[str, Any]] = [
                        {
                            "key": f"trial.epoch:w{worker}:{n}",
                            "type": "trial.epoch",
                            "data": {"trial_id": f"w{worker}", "epoch": n, "metrics": {}},
                        }
                    ]
                    r = http.post(f"/v1/internal/jobs/{target}/events", json={"events": events})
                    keys = [str(e["key"]) for e in events]
                    outcomes.append(Outcome("events", r.status_code, time.monotonic(), keys))

        workers = [threading.Thread(target=submit, args=(i,)) for i in range(2)]
        workers += [threading.Thread(target=post_events, args=(i,)) for i in range(2)]
        for w in workers:
            w.start()
        try:
            time.sleep(1.5)
            down = time.monotonic()
            # As if it crashed: connections cut, open transactions lost, WAL replayed on start.
            postgres.stop("immediate")
            time.sleep(1.0)
            postgres.start()
            back = time.monotonic()
            time.sleep(3.0)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)

        statuses = {o.status for o in outcomes}
        assert statuses <= {200, 202, 503}, sorted(statuses)  # never a 500
        refused = [o for o in outcomes if o.status == 503]
        assert refused and all(down <= o.at for o in refused)  # the outage was felt
        recovered = min(o.at for o in outcomes if o.status < 300 and o.at > back)
        assert recovered - back < 10, "the API did not serve again within 10 s"
        assert [
            o for o in outcomes if o.at > recovered + 2 and o.status != 200 and o.status != 202
        ] == []

        engine = create_engine(postgres.url)
        try:
            with engine.connect() as conn:
                named = conn.execute(select(Job.name, Job.id)).all()
                keys = set(
                    conn.execute(select(JobEvent.key).where(JobEvent.job_id == target)).scalars()
                )
        finally:
            engine.dispose()
        acknowledged_jobs = {
            i for o in outcomes if o.kind == "job" and o.status < 300 for i in o.ids
        }
        acknowledged_keys = {
            k for o in outcomes if o.kind == "events" and o.status < 300 for k in o.ids
        }
        assert len(acknowledged_jobs) > 10 and len(acknowledged_keys) > 10
        assert acknowledged_jobs <= {job_id for _, job_id in named}
        assert acknowledged_keys <= keys
        # A retried keyed submission made one job, whichever try was acknowledged: the one
        # a refused try may have committed is the one the retry gets back.
        keyed = [name for name, _ in named if name.startswith("load-1-")]
        assert len(keyed) == len(set(keyed)) > 5
    finally:
        server.should_exit = True
        thread.join(timeout=30)
