"""`crucible up` refuses to start beside something that holds one of its ports: another Ray's
dashboard on the same port would otherwise answer for ours and take our jobs."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack import LocalStack, PortBusy, StackConfig


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_busy_port_stops_the_start_before_anything_runs(taken_port: int, tmp_path: Path) -> None:
    stack = LocalStack(StackConfig(data_dir=tmp_path, dashboard_port=taken_port))
    with pytest.raises(PortBusy, match=f"{taken_port} \\(--dashboard-port\\)"):
        stack.start()
    assert stack.ray is None and stack.api is None
    assert not (tmp_path / "ray-head.pid").exists()


def test_crucible_up_says_which_port_is_busy(taken_port: int, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(taken_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert f"{taken_port} (--port)" in out.stdout + out.stderr
