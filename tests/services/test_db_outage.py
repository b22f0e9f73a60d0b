"""A database outage on a real PostgreSQL of the test's own: while it is down the API answers
503 with Retry-After (never 500) and stays up; once it is back, the API recovers by itself
within 10 s and nothing it acknowledged before is lost.

The shared PostgreSQL of the machine is left alone: this test starts a private server
(initdb in a temporary folder, a free port) so that stopping it harms no other test.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.config import Settings
from services.core.datasets import builtin_id

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

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data / "db"), "-m", "fast", "-w", "stop")


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
