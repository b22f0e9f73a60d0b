"""A real stack for end-to-end tests: `crucible up` with a local Ray head, on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.client import Crucible


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Stack:
    url: str
    token: str
    data_dir: Path
    dashboard_url: str
    ray_token: str
    client: Crucible


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("crucible")
    ports = {
        name: free_port()
        for name in (
            "port",
            "ray-port",
            "dashboard-port",
            "serve-port",
            "client-server-port",
            "agent-port",
        )
    }
    cmd = [
        sys.executable,
        "-m",
        "services.cli",
        "up",
        "--data-dir",
        str(data_dir),
        "--num-cpus",
        "2",
        *[a for k, v in ports.items() for a in (f"--{k}", str(v))],
    ]
    log = open(data_dir / "up.log", "wb")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{ports['port']}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"crucible up exited: {(data_dir / 'up.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("crucible up did not become ready in 180s")
        time.sleep(0.5)
    token = (data_dir / "token").read_text().strip()
    assert (data_dir / "token").stat().st_mode & 0o777 == 0o600
    client = Crucible(url, token)
    yield Stack(
        url,
        token,
        data_dir,
        f"http://127.0.0.1:{ports['dashboard-port']}",
        (data_dir / "ray_token").read_text().strip(),
        client,
    )
    client.close()

    # Ctrl-C stops what `up` started: the API and the whole Ray head.
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    log.close()
    assert code == 0, (data_dir / "up.log").read_text()[-3000:]
    for name in ("port", "dashboard-port", "ray-port", "serve-port"):
        assert not port_open(ports[name]), f"{name} still open after Ctrl-C"
