"""`crucible up` as a process supervisor: API restarts keep jobs alive; RAY_ADDRESS joins."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Stack, free_port

pytestmark = pytest.mark.e2e


def test_api_crash_does_not_stop_running_jobs(stack: Stack, adult_small: Path) -> None:
    c = stack.client
    ds = c.upload_dataset(adult_small, "adult-small-restart")
    job = c.submit_job(
        {
            "name": "survivor",
            "dataset": {"id": ds["id"], "target": "income"},
            "model": {"hidden_sizes": [8]},
            "training": {"epochs": 25, "batch_size": 32},
        }
    )
    deadline = time.monotonic() + 120
    while not any(t["history"] for t in c.trials(job["id"])):
        assert time.monotonic() < deadline, c.job(job["id"])
        time.sleep(0.3)

    api_pid = int((stack.data_dir / "api.pid").read_text())
    os.kill(api_pid, signal.SIGKILL)
    # `up` notices and starts a new API process; the job goes on meanwhile on Ray.
    deadline = time.monotonic() + 60
    while True:
        try:
            new_pid = int((stack.data_dir / "api.pid").read_text())
            if new_pid != api_pid and httpx.get(f"{stack.url}/readyz").status_code == 200:
                break
        except (httpx.HTTPError, ValueError):
            pass
        assert time.monotonic() < deadline, "the API was not restarted"
        time.sleep(0.3)

    final = c.wait(job["id"], timeout=300, poll=0.5)
    assert final["status"] == "succeeded", final["error"]
    (trial,) = c.trials(job["id"])
    # Events sent while the API was down were retried: no epoch is missing.
    assert [h["epoch"] for h in trial["history"]] == list(range(1, 26))


def test_up_joins_an_existing_cluster_with_ray_address(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    env: dict[str, Any] = {
        **os.environ,
        "RAY_ADDRESS": stack.dashboard_url,
        "RAY_AUTH_TOKEN": stack.ray_token,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "up exited"
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert ready["ray"] is True  # reaches the existing cluster's dashboard, token and all
        assert not (tmp_path / "ray-head.pid").exists()  # and started no head of its own
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    # Stopping the joining stack leaves the cluster it joined running.
    assert (
        httpx.get(
            f"{stack.dashboard_url}/api/version",
            headers={"Authorization": f"Bearer {stack.ray_token}"},
        ).status_code
        == 200
    )
