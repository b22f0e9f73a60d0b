"""A real stack for end-to-end tests: `crucible up` with a local Ray head, on free ports.

Every test here that needs a stack of its own (chaos on a tmpfs, SIGTERM handling, joining a
cluster) starts it through `start_up`, so the ports, the environment and the wait for
readiness are written once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.client import Crucible

STACK_PORTS = (
    "port",
    "ray-port",
    "dashboard-port",
    "serve-port",
    "client-server-port",
    "agent-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Up:
    """A `crucible up` process and where to reach what it started."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    @property
    def token(self) -> str:
        """The admin token `up` made (and keeps in its data dir)."""
        return (self.data_dir / "token").read_text().strip()

    @property
    def ray_token(self) -> str:
        return (self.data_dir / "ray_token").read_text().strip()

    def log_tail(self) -> str:
        return (self.data_dir / "up.log").read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"crucible up exited: {self.log_tail()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"crucible up not ready in {timeout:g}s"
            time.sleep(0.5)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 90) -> int:
        """Stop it as a user or a supervisor would; kill it only if it does not stop."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextlib.contextmanager
def start_up(
    data_dir: Path,
    *,
    num_cpus: int = 2,
    env: Mapping[str, str] | None = None,
    ports: tuple[str, ...] = STACK_PORTS,
    preexec_fn: Callable[[], object] | None = None,
    ready: bool = True,
) -> Iterator[Up]:
    """`crucible up` on free ports; stopped with Ctrl-C (SIGINT) on the way out if still up.

    The test's own Ray address and token are not inherited: a stack started here owns its head
    unless ``env`` names a cluster to join.
    """
    chosen = {name: free_port() for name in ports}
    cmd = [sys.executable, "-m", "services.cli", "up", "--data-dir", str(data_dir)]
    cmd += ["--num-cpus", str(num_cpus)]
    cmd += [a for k, v in chosen.items() for a in (f"--{k}", str(v))]
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    with open(data_dir / "up.log", "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**base, **(env or {})},
            preexec_fn=preexec_fn,
        )
        up = Up(proc, chosen, data_dir)
        try:
            if ready:
                up.wait_ready()
            yield up
        finally:
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    up.stop()


@dataclass
class Stack:
    url: str
    token: str
    data_dir: Path
    dashboard_url: str
    ray_token: str
    client: Crucible


# Package scope: the stack and its Serve replicas stop when the last e2e test is done, instead
# of idling through the rest of the session and slowing the tests that time real training.
@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("crucible")
    # Where tests put files to register by URI (image folders can only come that way).
    (data_dir / "incoming").mkdir()
    roots = {"CRUCIBLE_DATASET_ROOTS": str(data_dir / "incoming")}
    with start_up(data_dir, env=roots) as up:
        assert (data_dir / "token").stat().st_mode & 0o777 == 0o600
        client = Crucible(up.url, up.token)
        yield Stack(up.url, up.token, data_dir, up.dashboard_url, up.ray_token, client)
        client.close()
        # Ctrl-C stops what `up` started: the API and the whole Ray head.
        code = up.stop()
        assert code == 0, up.log_tail()
        for name in ("port", "dashboard-port", "ray-port", "serve-port"):
            assert not port_open(up.ports[name]), f"{name} still open after Ctrl-C"
