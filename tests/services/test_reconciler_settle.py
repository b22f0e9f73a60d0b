"""The reconciler settles a job whose driver ended while the API was away, from what the
driver left in artifact storage: its undelivered events and its result. Whatever exit status
Ray reports, such a job is not launched again.

A fake Ray gateway stands in for the cluster (the real stack: tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs.events import UNDELIVERED, Event
from services.core.datasets import builtin_id
from services.orchestrator.launcher import job_dir
from services.orchestrator.ray_gateway import RayJob
from services.store.models import utcnow
from services.store.repositories import JobRepository

from .conftest import Client


class FakeRay:
    """Ray's record of one finished driver; counts what the reconciler asks of it."""

    def __init__(self, status: str, message: str | None = None) -> None:
        self.status, self.message = status, message
        self.submitted: list[str] = []

    def get_job(self, submission_id: str) -> RayJob | None:
        return RayJob(submission_id, self.status, self.message)

    def submit_job(self, submission_id: str, *args: Any, **kwargs: Any) -> RayJob:
        self.submitted.append(submission_id)
        return RayJob(submission_id, "PENDING", None)

    def job_logs_tail(self, submission_id: str, chars: int = 4000) -> str:
        return "driver output"

    def stop_job(self, submission_id: str) -> None:
        pass


def result_doc(client: Client, job_id: str) -> dict[str, Any]:
    return {
        "best_trial": {"trial_id": "t1", "config": {}, "metrics": {"val_accuracy": 0.8}},
        "evaluation": {"accuracy": 0.79},
        "audit": {"passed": True},
        "bundle": {
            "uri": str(job_dir(client.settings, job_id) / "model"),
            "digest": "0" * 64,
        },
    }


def submitted_job(client: Client) -> str:
    spec = {"name": "away", "dataset": {"id": builtin_id("adult"), "target": "income"}}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job_id = str(r.json()["id"])
    services = client.c.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as s:
        job = JobRepository(s).get(job_id)
        assert job is not None
        job.submitted_at = utcnow()  # launched before the API went away
    job_dir(client.settings, job_id).mkdir(parents=True)
    return job_id


def tick(client: Client, ray: FakeRay) -> None:
    reconciler = client.c.app.state.services.reconciler  # type: ignore[attr-defined]
    reconciler.gateway = ray
    reconciler.tick()


def write_undelivered(client: Client, job_id: str, events: list[Event]) -> None:
    path = job_dir(client.settings, job_id) / UNDELIVERED
    path.write_text("".join(e.model_dump_json() + "\n" for e in events))


def test_undelivered_events_and_result_are_applied_not_relaunched(client: Client) -> None:
    job_id = submitted_job(client)
    # The API took the first epochs; the rest, and the final event, waited in the driver.
    delivered = [
        Event(key="job.running:1", type="job.running", data={"stage": "prepare"}),
        Event(key="trial.started:t1", type="trial.started", data={"trial_id": "t1"}),
        *[
            Event(
                key=f"trial.epoch:t1:{n}",
                type="trial.epoch",
                data={"trial_id": "t1", "epoch": n, "metrics": {"val_accuracy": 0.7}},
            )
            for n in (1, 2)
        ],
    ]
    r = client.c.post(
        f"/v1/internal/jobs/{job_id}/events",
        json={"events": [e.model_dump(mode="json") for e in delivered]},
        headers={"Authorization": f"Bearer {job_token(client, job_id)}"},
    )
    assert r.status_code == 200, r.text
    late = [
        delivered[-1],  # the batch being retried when the driver gave up (sent twice)
        *[
            Event(
                key=f"trial.epoch:t1:{n}",
                type="trial.epoch",
                data={"trial_id": "t1", "epoch": n, "metrics": {"val_accuracy": 0.8}},
            )
            for n in (3, 4)
        ],
        Event(key="trial.finished:t1", type="trial.finished", data={"trial_id": "t1"}),
        Event(key="job.succeeded", type="job.succeeded", data=result_doc(client, job_id)),
    ]
    write_undelivered(client, job_id, late)
    # The driver could not report, so it exited non-zero: Ray calls the job FAILED.
    ray = FakeRay("FAILED", "Job entrypoint command failed with exit code 3")
    tick(client, ray)

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempts"]) == ("succeeded", 0)
    assert ray.submitted == []  # not launched again
    (trial,) = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert trial["status"] == "succeeded"
    assert [h["epoch"] for h in trial["history"]] == [1, 2, 3, 4]
    assert client.get(f"/v1/jobs/{job_id}/evaluation").json()["accuracy"] == 0.79
    tick(client, ray)  # settled once: a second pass changes nothing
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_result_file_alone_settles_the_job_whatever_ray_says(client: Client) -> None:
    job_id = submitted_job(client)
    folder = job_dir(client.settings, job_id)
    (folder / "result.json").write_text(json.dumps(result_doc(client, job_id)))
    ray = FakeRay("FAILED", "Job entrypoint command failed with exit code 3")
    tick(client, ray)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempts"], ray.submitted) == ("succeeded", 0, [])


def test_a_half_written_result_is_not_read_and_blocks_no_other_job(client: Client) -> None:
    broken = submitted_job(client)
    (job_dir(client.settings, broken) / "result.json").write_text('{"best_trial": {"tri')
    other = submitted_job(client)
    (job_dir(client.settings, other) / "result.json").write_text(
        json.dumps(result_doc(client, other))
    )
    ray = FakeRay("SUCCEEDED")
    tick(client, ray)
    assert client.get(f"/v1/jobs/{other}").json()["status"] == "succeeded"
    job = client.get(f"/v1/jobs/{broken}").json()
    # Read as a driver that left no result: launched again (max_driver_restarts is 1).
    assert job["attempts"] == 1 and job["status"] != "failed"


def test_an_undelivered_failure_fails_the_job_with_its_reason(client: Client) -> None:
    job_id = submitted_job(client)
    reason = "artifact store full: No space left on device (writing /x/model.safetensors)"
    write_undelivered(
        client,
        job_id,
        [
            Event(key="job.running:1", type="job.running", data={"stage": "prepare"}),
            Event(key="job.failed", type="job.failed", data={"error": reason}),
        ],
    )
    ray = FakeRay("FAILED", "Job entrypoint command failed with exit code 1")
    tick(client, ray)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["error"], job["attempts"]) == ("failed", reason, 0)
    assert ray.submitted == []


def job_token(client: Client, job_id: str) -> str:
    from services.core.auth import job_token as token

    return token(client.settings.resolved_secret_key, job_id)


def test_with_ray_unreachable_a_pass_stops_at_the_first_job(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's Ray refuses connections: the first queued job finds that out and the
    others wait for the next pass, instead of each writing its manifest and asking again."""
    spec = {"name": "q", "dataset": {"id": builtin_id("adult"), "target": "income"}}
    ids = [client.post("/v1/jobs", json=spec).json()["id"] for _ in range(4)]
    reconciler = client.c.app.state.services.reconciler  # type: ignore[attr-defined]
    with caplog.at_level("WARNING", logger="services.orchestrator.reconciler"):
        reconciler.tick()
    manifests = [i for i in ids if (job_dir(client.settings, i) / "manifest.json").exists()]
    assert len(manifests) == 1, manifests
    warned = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warned) == 1 and "4 job(s) wait" in warned[0].getMessage()
