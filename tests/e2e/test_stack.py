"""`crucible up` as a process supervisor: API restarts keep jobs alive; RAY_ADDRESS joins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import Stack, port_open, start_up

pytestmark = pytest.mark.e2e


def ray_submissions(dashboard_url: str, ray_token: str, job_id: str) -> list[str]:
    """Every Ray job launched for the Crucible job ``job_id``, as Ray's Jobs API lists them."""
    r = httpx.get(f"{dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {ray_token}"})
    r.raise_for_status()
    return sorted(
        j["submission_id"]
        for j in r.json()
        if (j.get("metadata") or {}).get("crucible_job_id") == job_id
    )


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
    # The new API's reconciler found the job running and launched nothing again.
    assert ray_submissions(stack.dashboard_url, stack.ray_token, job["id"]) == [job["id"]]


def test_up_joins_an_existing_cluster_with_ray_address(stack: Stack, tmp_path: Path) -> None:
    env = {"RAY_ADDRESS": stack.dashboard_url, "RAY_AUTH_TOKEN": stack.ray_token}
    with start_up(tmp_path, env=env, ports=("port",)) as up:
        ready = httpx.get(f"{up.url}/readyz").json()
        assert ready["ray"] is True  # reaches the existing cluster's dashboard, token and all
        assert not (tmp_path / "ray-head.pid").exists()  # and started no head of its own
        assert up.stop() == 0, up.log_tail()
    # Stopping the joining stack leaves the cluster it joined running.
    assert (
        httpx.get(
            f"{stack.dashboard_url}/api/version",
            headers={"Authorization": f"Bearer {stack.ray_token}"},
        ).status_code
        == 200
    )


def test_killed_driver_is_relaunched_and_the_search_resumes(
    stack: Stack, adult_small: Path
) -> None:
    c = stack.client
    ds = c.upload_dataset(adult_small, "adult-small-driver")
    job = c.submit_job(
        {
            "name": "driver-kill",
            "dataset": {"id": ds["id"], "target": "income"},
            "model": {"hidden_sizes": [8]},
            # Small batches make epochs long enough (~0.5 s) that Tune's snapshot of the search
            # reaches the store before the checkpoint it names is rotated out (num_to_keep=2):
            # a driver killed in between restores a snapshot naming a deleted checkpoint, and
            # the trial cannot resume (docs/security.md, "The search's saved state").
            "training": {"epochs": 12, "batch_size": 8},
            "search": {
                "space": {"training.learning_rate": {"choice": [0.01, 0.02]}},
                "algorithm": "grid",
                "max_concurrent": 1,
            },
        }
    )
    # Wait until the first trial has finished and the second is part-way through.
    deadline = time.monotonic() + 180
    while True:
        trials = c.trials(job["id"])
        done = [t for t in trials if t["status"] == "succeeded"]
        going = [t for t in trials if t["status"] == "running" and t["epochs_completed"] >= 2]
        if done and going:
            break
        assert time.monotonic() < deadline, trials
        time.sleep(0.2)
    # Tune snapshots the search every two trial checkpoints and copies the snapshot to the
    # artifact store in the background: a driver killed before that copy lands restores an
    # older snapshot, and the trial starts over (a CI run under load did). So the kill waits
    # for a snapshot written after the second trial's second epoch was seen.
    seen = time.time()
    tune_dir = stack.data_dir / "artifacts" / "jobs" / job["id"] / "tune" / job["id"]
    while not any(f.stat().st_mtime >= seen for f in tune_dir.glob("experiment_state-*.json")):
        assert time.monotonic() < deadline, "no snapshot of the search reached the store"
        time.sleep(0.1)
    driver = next(
        e for e in c.events(job["id"]) if e["type"] == "job.running" and e["data"].get("pid")
    )
    os.kill(driver["data"]["pid"], signal.SIGKILL)

    final = c.wait(job["id"], timeout=300, poll=0.5)
    assert final["status"] == "succeeded", final["error"]
    assert final["attempts"] == 1
    events = list(c.events(job["id"]))
    kinds = [e["type"] for e in events]
    assert "job.relaunched" in kinds
    restored = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "job.running" and e["data"].get("stage") == "restore"
    )
    finished_before = {
        e["data"]["trial_id"] for e in events[:restored] if e["type"] == "trial.finished"
    }
    later = [e["data"] for e in events[restored:] if e["type"] == "trial.epoch"]
    assert finished_before and later
    assert not [e for e in later if e["trial_id"] in finished_before]  # not rerun
    assert later[0]["start_epoch"] >= 1  # the interrupted trial went on from its checkpoint
    for t in c.trials(job["id"]):
        assert [h["epoch"] for h in t["history"]] == list(range(1, 13))


def run_cli(
    stack: Stack, *args: str, token: str | None = None, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``crucible <args>`` against the stack, as a user runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            *args,
            "--url",
            stack.url,
            "--token",
            token or stack.token,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_cli_submit_follow_shows_progress_and_leaderboard(
    stack: Stack, adult_small: Path, tmp_path: Path
) -> None:
    ds = stack.client.upload_dataset(adult_small, "adult-small-cli")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: cli-follow\n"
        f"dataset: {{id: {ds['id']}, target: income}}\n"
        "model: {hidden_sizes: [8]}\n"
        "training: {epochs: 2, batch_size: 128}\n"
        "search:\n"
        "  space: {training.learning_rate: {choice: [0.01, 0.02]}}\n"
        "  algorithm: grid\n"
    )
    out = run_cli(stack, "submit", str(spec), "--follow", timeout=300, COLUMNS="160")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "job succeeded" in out.stdout
    assert "Leaderboard" in out.stdout and out.stdout.count("trial") >= 2
    bad = run_cli(stack, "submit", str(spec), token="wrong", timeout=60)
    assert bad.returncode == 2 and "401" in bad.stdout


def test_cli_rejects_an_unreadable_spec_without_a_traceback(stack: Stack, tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text("name: x\ndataset: {id: [unclosed\n")
    out = run_cli(stack, "submit", str(spec), timeout=60)
    assert out.returncode == 2
    assert "Cannot read the spec" in out.stdout and "Traceback" not in out.stdout + out.stderr


def test_cli_shows_a_jobs_logs_and_the_endpoints(stack: Stack) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(stack, *args)

    c = stack.client
    done = next(j for j in c.jobs() if j["status"] == "succeeded")
    logs = cli("jobs", "logs", done["id"], "--tail", "100000")
    assert logs.returncode == 0, logs.stderr
    assert f"driver for job {done['id']} started" in logs.stdout
    missing = cli("jobs", "logs", "job_nope")
    assert missing.returncode != 0 and "no job" in (missing.stdout + missing.stderr)
    listed = cli("endpoints", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    names = {e["name"] for e in json.loads(listed.stdout)}
    assert names == {e["name"] for e in c.endpoints()}
    if names:
        shown = cli("endpoints", "show", sorted(names)[0], "--json")
        assert json.loads(shown.stdout)["name"] == sorted(names)[0]


def test_sigterm_stops_up_and_its_ray_head_even_with_sigint_ignored(tmp_path: Path) -> None:
    """A supervisor (systemd, a container runtime) sends SIGTERM; a shell's background job
    starts with SIGINT ignored. Either way `up` stops the API and the whole Ray head."""
    with start_up(
        tmp_path,
        num_cpus=1,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    ) as up:
        assert up.stop(signal.SIGTERM, timeout=120) == 0, up.log_tail()
    for name in ("port", "dashboard-port", "ray-port"):
        assert not port_open(up.ports[name]), f"{name} still open after SIGTERM"


def test_sigint_reaches_up_when_it_was_started_ignoring_it() -> None:
    code = (
        "import os, signal\n"
        "from services.stack import stop_on_signals\n"
        "stop_on_signals()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    signal.pause()\n"
        "except KeyboardInterrupt as exc:\n"
        "    print('interrupted by', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert out.stdout.strip() == "interrupted by SIGINT", out
