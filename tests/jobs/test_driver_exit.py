"""How the job driver ends when things around it fail: the API away when it reports (its
events are kept for the reconciler), the artifact store full (the job says so)."""

from __future__ import annotations

import errno
import json
import socket
from pathlib import Path
from typing import Any

import pytest

import jobs.run
from jobs.events import UNDELIVERED, Event


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


@pytest.fixture
def job_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A job's folder with its manifest, and a driver environment whose API is away."""
    folder = tmp_path / "jobs" / "job_1"
    folder.mkdir(parents=True)
    manifest = {
        "job_id": "job_1",
        "spec": {"name": "x", "dataset": {"id": "ds_1", "target": "y"}},
        "dataset": {"id": "ds_1", "uri": str(tmp_path / "d.parquet"), "sha256": "0" * 64},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("CRUCIBLE_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("CRUCIBLE_API_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("CRUCIBLE_JOB_TOKEN", "token")
    monkeypatch.setattr(jobs.run, "FLUSH_TIMEOUT_S", 1.0)
    return folder


def undelivered(folder: Path) -> list[Event]:
    lines = (folder / UNDELIVERED).read_text().splitlines()
    return [Event.model_validate_json(line) for line in lines]


def test_events_the_api_never_took_are_kept_for_the_reconciler(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = {"best_trial": {"trial_id": "t1"}, "bundle": {"uri": "u", "digest": "d"}}

    def execute(manifest: Any, sink: Any) -> dict[str, Any]:
        sink.emit("trial.epoch", "trial.epoch:t1:1", trial_id="t1", epoch=1, metrics={})
        return result

    monkeypatch.setattr(jobs.run, "execute", execute)
    # The work is done and kept: the driver succeeds though it could not report.
    assert jobs.run.main(["run", "job_1"]) == 0
    assert json.loads((job_dir / "result.json").read_text()) == result
    assert [(e.type, e.key) for e in undelivered(job_dir)] == [
        ("job.running", next(e.key for e in undelivered(job_dir))),
        ("trial.epoch", "trial.epoch:t1:1"),
        ("job.succeeded", "job.succeeded"),
    ]
    assert undelivered(job_dir)[-1].data == result
    assert not list(job_dir.glob("*.tmp"))


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "/store/jobs/job_1/.model.x.tmp/w"),
        # safetensors' writer reports it as its own error, with the OS's words in the text
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
)
def test_a_full_artifact_store_is_the_jobs_reason(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def execute(manifest: Any, sink: Any) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(jobs.run, "execute", execute)
    assert jobs.run.main(["run", "job_1"]) == 1
    failed = undelivered(job_dir)[-1]
    assert failed.type == "job.failed"
    assert failed.data["error"].startswith("artifact store full: No space left on device")
    if isinstance(error, OSError):
        assert failed.data["error"].endswith("(writing /store/jobs/job_1/.model.x.tmp/w)")
    assert not (job_dir / "result.json").exists()


def test_a_result_that_cannot_be_written_leaves_none(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_text(self: Path, text: str) -> int:
        with open(self, "w") as f:
            f.write(text[:10])  # part of it reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobs.run, "execute", lambda manifest, sink: {"big": "x" * 100})
    monkeypatch.setattr(Path, "write_text", write_text)
    assert jobs.run.main(["run", "job_1"]) == 1
    assert not (job_dir / "result.json").exists() and not list(job_dir.glob("*.tmp"))
    failed = undelivered(job_dir)[-1]
    assert failed.data["error"] == (
        f"artifact store full: No space left on device (writing {job_dir / 'result.json'})"
    )
