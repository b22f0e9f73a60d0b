"""The embedded stack of ``crucible up``: a local Ray head and the API, as two process groups.

Ray runs in its own process group so the API can restart (by hand or after a crash, which
``up`` does for it) without taking running jobs down; Ctrl-C stops the API first, then Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.config import read_or_create_secret

log = logging.getLogger("crucible.up")


@dataclass
class StackConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    ray_port: int = 6380  # Redis often holds 6379, Ray's default
    dashboard_port: int = 8265
    client_server_port: int = 10001
    agent_port: int = 52365
    serve_port: int = 8000
    num_cpus: int | None = None
    ray_address: str | None = None  # join this cluster instead of starting one
    # Extra environment of the Ray head we start (and so of its Serve controller, proxies and
    # replicas): Serve's feature flags such as RAY_SERVE_ENABLE_HA_PROXY are read from it.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


def _wait_http(
    url: str, headers: dict[str, str], timeout: float, proc: subprocess.Popen[bytes], what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f}s")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PortBusy(RuntimeError):
    """A port the stack would listen on is taken: by another stack, another Ray (whose
    dashboard would then answer for ours and run our jobs), or anything else."""


def check_ports_free(ports: dict[str, int]) -> None:
    busy = [f"{port} (--{name})" for name, port in ports.items() if _port_open(port)]
    if busy:
        raise PortBusy(
            f"port(s) already in use: {', '.join(busy)}; stop what holds them (another "
            "`crucible up` or Ray?) or pick other ports with those options"
        )


def _wait_closed(ports: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_port_open(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.2)


def stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM both stop what ``up`` started, as a KeyboardInterrupt.

    Without this a SIGTERM (systemd, a container runtime, ``kill``) ended ``up`` at once and
    left its Ray head running; and a process started in the background of a non-interactive
    shell inherits SIGINT ignored, so Ctrl-C's signal did nothing at all (a CI run's stacks
    outlived their tests that way and slowed the rest of the run).
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left (Ray's agents linger)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class LocalStack:
    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.ray: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # A cluster we join brings its own token (if any) in RAY_AUTH_TOKEN; the head we start
        # gets one of ours, kept in the data dir.
        self.ray_token: str | None = os.environ.get("RAY_AUTH_TOKEN") or (
            None if cfg.ray_address else read_or_create_secret(cfg.data_dir / "ray_token", 24)[0]
        )
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            # Ray job drivers run `python -m jobs.run`: this environment's python.
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        if self.ray_token:
            self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.ray_token)
        self.env.pop("RAY_ADDRESS", None)

    @property
    def ray_temp_dir(self) -> Path:
        # Short on purpose: Ray's socket paths live under it and must stay below 108 bytes.
        return Path(tempfile.gettempdir()) / f"crucible-ray-{self.cfg.ray_port}"

    @property
    def ray_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ray_token}"} if self.ray_token else {}

    @property
    def ray_env(self) -> dict[str, str]:
        return {**self.env, **self.cfg.env}

    def start_ray(self) -> None:
        c = self.cfg
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={c.ray_port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={c.dashboard_port}",
            f"--ray-client-server-port={c.client_server_port}",
            f"--dashboard-agent-listen-port={c.agent_port}",
            "--disable-usage-stats",
            # Its own temp dir: Ray job drivers find their cluster through the temp dir's
            # "current cluster" file, which another Ray on this machine would overwrite.
            f"--temp-dir={self.ray_temp_dir}",
        ]
        if c.num_cpus is not None:
            cmd.append(f"--num-cpus={c.num_cpus}")
        log_file = open(c.data_dir / "ray-head.log", "ab")  # noqa: SIM115 (lives with the child)
        self.ray = subprocess.Popen(
            cmd, env=self.ray_env, stdout=log_file, stderr=log_file, start_new_session=True
        )
        (c.data_dir / "ray-head.pid").write_text(f"{self.ray.pid}\n")
        _wait_http(
            f"{c.dashboard_url}/api/version", self.ray_headers, 120, self.ray, "the Ray head"
        )

    def start_api(self) -> None:
        c = self.cfg
        env = {
            **self.env,
            "CRUCIBLE_DATA_DIR": str(c.data_dir),
            "CRUCIBLE_HOST": c.host,
            "CRUCIBLE_PORT": str(c.port),
            "CRUCIBLE_SERVE_PORT": str(c.serve_port),
        }
        if c.ray_address:
            # The dashboard URL is derived from RAY_ADDRESS unless given explicitly.
            env["RAY_ADDRESS"] = c.ray_address
        else:
            env["CRUCIBLE_RAY_DASHBOARD_URL"] = c.dashboard_url
        self.api = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "api"], env=env, start_new_session=True
        )
        (c.data_dir / "api.pid").write_text(f"{self.api.pid}\n")
        _wait_http(f"{c.api_url}/readyz", {}, 120, self.api, "the API")

    def start(self) -> None:
        c = self.cfg
        wanted = {"port": c.port}
        if c.ray_address is None:
            wanted |= {
                "ray-port": c.ray_port,
                "dashboard-port": c.dashboard_port,
                "client-server-port": c.client_server_port,
                "agent-port": c.agent_port,
                "serve-port": c.serve_port,
            }
        check_ports_free(wanted)
        try:
            if self.cfg.ray_address is None:
                self.start_ray()
            self.start_api()
        except BaseException:
            self.stop()
            raise

    def supervise(self) -> int:
        """Run until Ctrl-C (0) or the Ray head dies (1); restart the API if it dies."""
        restarts: list[float] = []
        try:
            while True:
                time.sleep(1)
                if self.ray is not None and self.ray.poll() is not None:
                    log.error("the Ray head exited (code %s); stopping", self.ray.returncode)
                    return 1
                if self.api is not None and self.api.poll() is not None:
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 60] + [now]
                    if len(restarts) > 3:
                        log.error("the API keeps exiting; stopping")
                        return 1
                    log.warning("the API exited (code %s); restarting it", self.api.returncode)
                    self.start_api()
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()

    def stop(self) -> None:
        if self.api is not None:
            _stop_group(self.api, grace=15)
            self.api = None
        if self.ray is not None:
            _stop_group(self.ray, grace=15)
            self.ray = None
            # Ray's workers (the Serve proxy among them) lead process groups of their own and
            # exit when they notice their raylet is gone; wait for that before returning.
            _wait_closed([self.cfg.serve_port, self.cfg.dashboard_port, self.cfg.ray_port], 30)
