"""The embedded stack of ``crucible up``: a local Ray head and the API, as two process groups.

Ray runs in its own process group so the API can restart (by hand or after a crash, which
``up`` does for it) without taking running jobs down; Ctrl-C stops the API first, then Ray.
Only Ctrl-C, SIGTERM or the Ray head's own death end ``up``: an API that keeps failing is
restarted with a backoff for as long as it takes (``RestartPolicy``), Ray staying up.

Everything listens on loopback, and everything written (the data dir, Ray's temp dir) is
the owner's only: see ``LOOPBACK_ONLY_ENV`` and ``PRIVATE_UMASK``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.config import read_or_create_secret

log = logging.getLogger("crucible.up")

API_START_TIMEOUT_S = 120.0

# The umask of the processes ``up`` starts: the data dir holds the database, the tokens and
# every uploaded dataset, and Ray's temp dir the logs of every job; nobody else on the machine
# should read them. Ray and the API run as one user, so nothing of theirs needs group or
# other bits.
PRIVATE_UMASK = 0o077

# ``ray start --node-ip-address=127.0.0.1`` alone is not enough: on Linux Ray swaps a loopback
# node address for the host's (``resolve_ip_for_localhost``), and then the GCS, the raylet,
# the workers and the dashboard agent listen on all interfaces and its Prometheus exporters
# on 0.0.0.0, with no auth. Ray keeps a loopback node address only when "clusters" are off,
# which this variable (despite its name, read on every platform) does; every bind address
# then follows the node address. It also stops any node from joining this head, which `up`
# never wants: a cluster is joined with RAY_ADDRESS instead. (Ray's own tools run from a shell
# need it too, or they look for the head at the host's address.) One socket stays on all
# interfaces whatever Ray is told: each Serve replica's inter-deployment gRPC server, bound to
# [::]:0 in Ray's code, which takes only calls carrying the Ray token.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


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


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _write_pid(path: Path, pid: int) -> None:
    fd = _private_file(path)
    os.ftruncate(fd, 0)
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid}\n")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class PortBusy(RuntimeError):
    """A port the stack would listen on is taken: by another stack, another Ray (whose
    dashboard would then answer for ours and run our jobs), or anything else."""


class UnsafeDir(RuntimeError):
    """A folder the stack would keep private is someone else's, or not a plain folder."""


def private_dir(path: Path, *, follow_symlinks: bool = False) -> None:
    """Make ``path`` a folder of ours that only we can enter (0700).

    A folder someone else owns is refused rather than used: a folder at a fixed path under
    /tmp may have been made (or pointed elsewhere by a symlink) by another user before we
    came, and its owner could read or swap whatever we write there. A data dir may well be a
    symlink to a bigger disk, so there the link is followed and its target checked.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat() if follow_symlinks else path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise UnsafeDir(
            f"{path} is not a folder owned by this user (uid {os.getuid()}); move it away "
            "or choose another path"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=follow_symlinks)


def _private_file(path: Path) -> int:
    """An fd for appending to ``path``, a file only its owner reads (also when it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def ray_temp_dir(ray_port: int) -> Path:
    """Ray's temp dir for the head on ``ray_port``, inside a 0700 folder of ours.

    Ray makes its temp dir and session folders 0777 whatever the umask
    (``try_make_directory_shared``); inside a folder nobody else can enter that opens nothing.
    Short on purpose: Ray's socket paths live under it and must stay below 108 bytes. Its own
    per port: Ray job drivers find their cluster through the temp dir's "current cluster"
    file, which another Ray on this machine would overwrite.
    """
    return Path(tempfile.gettempdir()) / f"crucible-ray-{ray_port}" / "ray"


@dataclass
class RestartPolicy:
    """When to start the API again after it exited (or failed to start), and when to say so.

    The first restart is at once: a lone crash is the usual case, and jobs' drivers retry
    their events meanwhile. Each further failure in a row waits longer (``backoff_s``) so that
    an API that cannot start (its database down, its port taken, a bad setting) does not spin
    a core. Once ``backoff_s`` is used up the restart budget is spent: ``up`` says so in one
    error line and keeps trying every ``after_budget_s``, for ever. It never gives up and
    stops Ray instead: Ray holds the running jobs and the live endpoints, which need no API
    to go on (drivers keep undelivered events; replicas hold their token lists), so stopping
    it would turn a control-plane fault into an outage of everything; and whatever keeps the
    API down (a database, a disk, a port) is usually fixed outside ``up``, which then picks
    the API up again without anyone restarting ``up`` (and so Ray).
    """

    backoff_s: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
    after_budget_s: float = 60.0
    # An API up this long is healthy again: its next failure is a first one.
    stable_after_s: float = 60.0
    failures: int = 0  # failures in a row since the API was last stable

    @property
    def budget(self) -> int:
        return len(self.backoff_s)

    def failed(self) -> float:
        """Count one more failure; the wait before the next start."""
        delay = (
            self.backoff_s[self.failures] if self.failures < self.budget else self.after_budget_s
        )
        self.failures += 1
        return delay

    def up_for(self, seconds: float) -> bool:
        """The API has answered for ``seconds``; True when that just made it stable again."""
        if self.failures and seconds >= self.stable_after_s:
            self.failures = 0
            return True
        return False


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
        self.restarts = RestartPolicy()
        self._api_up_since: float | None = None  # when the running API first answered
        self._api_start_at: float | None = None  # when to start the API again, if it is down
        self._api_live_by = 0.0  # a starting API that has not answered by then is given up
        # Older versions left it 0755 with a 0644 database in it: closing the folder keeps
        # what is already inside private too.
        private_dir(cfg.data_dir, follow_symlinks=True)
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
        return ray_temp_dir(self.cfg.ray_port)

    @property
    def ray_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ray_token}"} if self.ray_token else {}

    @property
    def ray_env(self) -> dict[str, str]:
        return {**self.env, **self.cfg.env, **LOOPBACK_ONLY_ENV}

    def start_ray(self) -> None:
        c = self.cfg
        # Ray makes this 0777 when it starts: the folder around it stays ours alone.
        private_dir(self.ray_temp_dir.parent)
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
            f"--temp-dir={self.ray_temp_dir}",
        ]
        if c.num_cpus is not None:
            cmd.append(f"--num-cpus={c.num_cpus}")
        log_fd = _private_file(c.data_dir / "ray-head.log")
        try:
            self.ray = subprocess.Popen(
                cmd,
                env=self.ray_env,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )
        finally:
            os.close(log_fd)  # the child holds its own copy
        _write_pid(c.data_dir / "ray-head.pid", self.ray.pid)
        _wait_http(
            f"{c.dashboard_url}/api/version", self.ray_headers, 120, self.ray, "the Ray head"
        )
        # Ray is done making it shared (it does so once, at the node's start); its parent
        # already keeps everyone else out, this only makes the mode say so too.
        self.ray_temp_dir.chmod(0o700)

    def launch_api(self) -> subprocess.Popen[bytes]:
        """Start the API's process, without waiting for it to answer."""
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
            [sys.executable, "-m", "services.cli", "api"],
            env=env,
            start_new_session=True,
            umask=PRIVATE_UMASK,
        )
        _write_pid(c.data_dir / "api.pid", self.api.pid)
        return self.api

    def start_api(self) -> None:
        api = self.launch_api()
        _wait_http(f"{self.cfg.api_url}/readyz", {}, API_START_TIMEOUT_S, api, "the API")

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
            # The first start still fails loudly and stops Ray: nothing runs on it yet, and
            # whoever typed `crucible up` is there to read why.
            self.start_api()
        except BaseException:
            self.stop()
            raise

    def supervise(self, tick: float = 0.5) -> int:
        """Run until Ctrl-C or SIGTERM (0) or the Ray head's death (1), starting the API
        again whenever it exits, fails to start or hangs starting, as ``self.restarts`` says.

        Nothing the API does ends this loop, and so nothing the API does stops Ray.
        """
        self._api_up_since = time.monotonic() if self.api is not None else None
        try:
            while True:
                time.sleep(tick)
                if self.ray is not None and self.ray.poll() is not None:
                    log.error("the Ray head exited (code %s); stopping", self.ray.returncode)
                    return 1
                now = time.monotonic()
                try:
                    self._tend_api(now)
                except Exception:
                    # A surprise here (a bug, an odd OS error) must not end `up`: leaving the
                    # loop would stop Ray and everything running on it.
                    log.exception("supervising the API failed; carrying on")
                    if self.api is None and self._api_start_at is None:
                        self._api_start_at = now + self.restarts.after_budget_s
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop()

    def _tend_api(self, now: float) -> None:
        if self.api is None:
            if self._api_start_at is not None and now >= self._api_start_at:
                self._api_start_at = None
                try:
                    self.launch_api()
                except OSError as exc:
                    self._api_failed(f"the API could not be started ({exc})")
                    return
                self._api_up_since = None
                self._api_live_by = now + API_START_TIMEOUT_S
        elif self.api.poll() is not None:
            up = self._api_up_since
            ran = "" if up is None else f" after {now - up:.0f}s up"
            self._api_failed(f"the API exited (code {self.api.returncode}){ran}")
        elif self._api_up_since is None:
            # Alive is enough: an API whose database is down is not ready, yet it serves
            # again by itself once the database is back; killing it would not help.
            if _answers(f"{self.cfg.api_url}/healthz"):
                self._api_up_since = now
                log.info("the API is up again (pid %d)", self.api.pid)
            elif now > self._api_live_by:
                self._api_failed(f"the API did not answer within {API_START_TIMEOUT_S:.0f}s")
        elif self.restarts.up_for(now - self._api_up_since):
            log.info("the API has stayed up: its next exit restarts it at once")

    def _api_failed(self, what: str) -> None:
        """Clear away an API that exited or could not start, and schedule its next start."""
        if self.api is not None:
            # Its whole group: a crashed API can leave its dataset readers or Chromium behind.
            _stop_group(self.api, grace=5)
            self.api = None
        self._api_up_since = None
        delay = self.restarts.failed()
        n = self.restarts.failures
        if n == self.restarts.budget + 1:  # said once, not at every later try
            log.error(
                "%s; it failed %d times in a row: restart budget spent. Ray, its jobs and "
                "its endpoints stay up; starting the API again every %gs until it stays up "
                "(see its output above; Ctrl-C stops everything)",
                what,
                n,
                delay,
            )
        else:
            log.warning("%s; starting it again in %gs (failure %d in a row)", what, delay, n)
        self._api_start_at = time.monotonic() + delay

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
