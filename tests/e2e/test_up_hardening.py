"""What `crucible up` exposes and how it holds up: every socket of the stack on loopback, every
file it writes its owner's only, and an API that dies again while being restarted neither ends
`up` nor takes Ray (and so the jobs and endpoints on it) down."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.client import Crucible
from services.stack import ray_temp_dir

from .conftest import Stack, Up, start_up

pytestmark = pytest.mark.e2e


# --- the stack's processes and what they listen on ------------------------------------------


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def loopback(self) -> bool:
        a = self.address
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            return a.ipv4_mapped.is_loopback
        return a.is_loopback

    def __str__(self) -> str:
        return f"{self.process} (pid {self.pid}) on {self.address}:{self.port}"


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process we can see."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The name in parentheses may hold spaces and parentheses itself: split after it.
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(d.name)] = (int(fields[1]), int(fields[2]))
    return out


def stack_pids(*roots: int) -> set[int]:
    """``roots``, their process groups and all their descendants: Ray's workers (the Serve
    proxy and replicas, job drivers) lead groups of their own under the raylet."""
    procs = _processes()
    pids = {p for p, (_, group) in procs.items() if group in roots} | set(roots)
    grew = True
    while grew:
        more = {p for p, (parent, _) in procs.items() if parent in pids} - pids
        pids |= more
        grew = bool(more)
    return pids


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        # Whole: a clone in a longer folder (CI's) pushes a script's name past any cut.
        return " ".join(raw.replace("\0", " ").split()) or "?"
    return "?"


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp{,6} print each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listeners(pids: set[int]) -> list[Listener]:
    """Every listening TCP socket a process of ``pids`` holds, read from /proc (no `ss`)."""
    owner: dict[int, int] = {}  # socket inode -> pid
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owner[int(target[8:-1])] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A" or inode not in owner:  # 0A: LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            pid = owner[inode]
            found.append(Listener(pid, _name(pid), _address(hex_addr), int(hex_port, 16)))
    return found


def allowed_exception(listener: Listener) -> bool:
    """The one socket Ray 2.60 binds beyond loopback whatever it is told: a Serve replica's
    inter-deployment gRPC server, hard-coded to ``[::]:0`` (ray/serve/_private/replica.py,
    ``_on_initialized``). It takes only calls carrying the cluster's token (Ray's auth
    interceptor, RAY_AUTH_MODE=token)."""
    return listener.process.startswith("ray::ServeReplica") and listener.address.is_unspecified


# Keeps a driver, its job's supervisor actor and an actor's worker process alive, so that the
# core workers' own gRPC servers are among the sockets checked.
DRIVER = """
import time, ray
ray.init()
@ray.remote(num_cpus=0)
class Idle:
    def ping(self):
        return 1
idle = Idle.remote()
ray.get(idle.ping.remote())
print("WORKERS" + "-UP", flush=True)  # not as typed: Ray's log repeats the entrypoint
time.sleep(120)
"""


@contextlib.contextmanager
def ray_workers(dashboard_url: str, ray_token: str) -> Iterator[None]:
    auth = {"Authorization": f"Bearer {ray_token}"}
    with httpx.Client(base_url=dashboard_url, headers=auth, timeout=10) as ray:
        r = ray.post("/api/jobs/", json={"entrypoint": f"python -c '{DRIVER}'"})
        r.raise_for_status()
        job = r.json()["submission_id"]
        try:
            deadline = time.monotonic() + 90
            while "WORKERS-UP" not in ray.get(f"/api/jobs/{job}/logs").json()["logs"]:
                status = ray.get(f"/api/jobs/{job}").json()["status"]
                assert status in ("PENDING", "RUNNING"), ray.get(f"/api/jobs/{job}/logs").text
                assert time.monotonic() < deadline, "the Ray job's workers did not start"
                time.sleep(0.5)
            yield
        finally:
            ray.post(f"/api/jobs/{job}/stop")


def _pid(path: Path) -> int:
    return int(path.read_text())


def test_every_socket_of_the_stack_listens_on_loopback(stack: Stack) -> None:
    with ray_workers(stack.dashboard_url, stack.ray_token):
        ray_head = _pid(stack.data_dir / "ray-head.pid")
        pids = stack_pids(ray_head, _pid(stack.data_dir / "api.pid"))
        found = listeners(pids)
    names = "\n".join(sorted({lst.process for lst in found}))
    # The check sees the whole stack: the GCS, the raylet, the dashboard and its agent, the
    # API, and the workers the job started.
    parts = ("gcs_server", "raylet", "dashboard.py", "ray::DashboardAgent", "ray::Idle", "cli api")
    for part in parts:
        assert part in names, f"no listening socket of {part} among:\n{names}"
    exposed = [lst for lst in found if not lst.loopback and not allowed_exception(lst)]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(map(str, exposed))


# --- a stack of this module's own: file modes, and an API killed while restarting -----------


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data_dir = tmp_path_factory.mktemp("up-hardening") / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)  # as earlier versions of `up` left it
    with start_up(data_dir, num_cpus=1) as up:
        yield up


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_what_up_writes_is_its_owners_only(own: Up, adult_small: Path) -> None:
    with Crucible(own.url, own.token) as c:
        c.upload_dataset(adult_small, "modes")
    data = own.data_dir
    assert _mode(data) == 0o700
    artifacts = data / "artifacts"
    assert any(p.suffix == ".parquet" for p in artifacts.rglob("*")), "no dataset stored"
    assert (data / "crucible.db").exists()
    loose = []
    for path in [data, *data.rglob("*")]:
        if path == data / "up.log":  # the test's capture of up's output, not up's own file
            continue
        want = 0o700 if path.is_dir() else 0o600
        if _mode(path) != want:
            loose.append(f"{oct(_mode(path))} {path.relative_to(data)}")
    assert not loose, "readable by others:\n" + "\n".join(loose)

    # Ray makes its temp dir 0777 when it starts; the folder around it is ours and closed.
    temp = ray_temp_dir(own.ports["ray-port"])
    for folder in (temp.parent, temp):
        st = folder.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid(), folder
        assert _mode(folder) == 0o700, f"{oct(_mode(folder))} {folder}"
    assert _mode(temp / "ray_current_cluster") == 0o600


def _new_api_pid(up: Up, old: int, timeout: float = 30) -> int:
    """The pid of the API process `up` starts after ``old``, as soon as it is started."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ValueError, OSError):  # read while being rewritten
            if (pid := _pid(up.data_dir / "api.pid")) != old:
                return pid
        assert up.proc.poll() is None, f"crucible up exited: {up.log_tail()}"
        assert time.monotonic() < deadline, f"no new API after {timeout:g}s: {up.log_tail()}"
        time.sleep(0.02)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False


# Last in the module: before the fix this ended `up` and its Ray head.
def test_an_api_killed_again_while_restarting_leaves_up_and_ray_running(own: Up) -> None:
    ray_head = _pid(own.data_dir / "ray-head.pid")
    first = _pid(own.data_dir / "api.pid")
    os.kill(first, signal.SIGKILL)
    second = _new_api_pid(own, first)
    assert not _answers(f"{own.url}/healthz")  # it is starting, not up yet
    os.kill(second, signal.SIGKILL)
    _new_api_pid(own, second)

    own.wait_ready(timeout=90)  # and `up` stayed alive throughout
    assert own.proc.poll() is None
    assert _pid(own.data_dir / "ray-head.pid") == ray_head
    os.kill(ray_head, 0)  # the same head, still alive
    version = httpx.get(
        f"{own.dashboard_url}/api/version",
        headers={"Authorization": f"Bearer {own.ray_token}"},
    )
    assert version.status_code == 200
    # The second failure in a row waited before the next start.
    assert "failure 2 in a row" in own.log_tail(), own.log_tail()
