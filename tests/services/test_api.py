"""The HTTP API without a cluster: validation, auth, errors, and the event contract.

These tests run on SQLite and PostgreSQL. Jobs are accepted but not launched (the reconciler
is off); the end-to-end tests in tests/e2e launch them on a real Ray cluster.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jobs.datasets import BUILTIN
from jobs.events import Event
from services.api.app import create_app
from services.api.metrics import METRIC_NAMES
from services.config import Settings
from services.core.auth import job_token
from services.core.datasets import builtin_id

ADULT = builtin_id("adult")
TOKEN = "test-admin-token"


class Api:
    def __init__(
        self, app: FastAPI, client: TestClient, data_dir: Path, settings: Settings
    ) -> None:
        self.app = app
        self.c = client
        self.data_dir = data_dir
        self.settings = settings
        self.h = {"Authorization": f"Bearer {TOKEN}"}

    def get(self, path: str, **kw: Any) -> Any:
        return self.c.get(path, headers=self.h, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.c.post(path, headers=self.h, **kw)

    def count(self, path: str) -> int:
        return int(self.get(path).json()["total"])


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        bootstrap_token=TOKEN,
        ray_dashboard_url="http://127.0.0.1:9",
    )  # nothing listens there
    app = create_app(settings, reconcile=False)
    with TestClient(app) as client:
        yield Api(app, client, tmp_path, settings)


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "j",
        "dataset": {"id": ADULT, "target": "income"},
        "audit": {"sensitive_features": ["sex"]},
    }
    base.update(over)
    return base


def fields(r: Any) -> set[tuple[Any, ...]]:
    return {tuple(f["loc"]) for f in r.json()["fields"]}


# --- auth -------------------------------------------------------------------------------------


def test_every_v1_route_needs_a_token(api: Api) -> None:
    paths = {p: ops for p, ops in api.app.openapi()["paths"].items() if p.startswith("/v1")}
    routes = [(m.upper(), p) for p, ops in paths.items() for m in ops]
    assert len(routes) >= 14
    for method, template in routes:
        path = template.replace("{", "").replace("}", "")
        for _ in (1,):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
                r = api.c.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.json()["error"] == "unauthorized"


def test_open_routes(api: Api) -> None:
    assert api.c.get("/healthz").json() == {"status": "ok"}
    ready = api.c.get("/readyz").json()
    assert ready["database"] is True and ready["ray"] is False
    text = api.get("/metrics").text  # an admin's token (the metrics name endpoints)
    for name in METRIC_NAMES:
        assert name in text


def test_every_request_is_counted_by_route_template_and_status(api: Api) -> None:
    api.get("/v1/jobs")
    api.get("/v1/jobs/job_nope")
    api.c.get("/v1/jobs")  # no token
    api.c.get("/no/such/page")
    text = api.get("/metrics").text

    def count(method: str, route: str, status: int) -> float:
        line = f'crucible_api_requests_total{{method="{method}",route="{route}",status="{status}"}}'
        found = [x for x in text.splitlines() if x.startswith(line + " ")]
        return float(found[0].split()[-1]) if found else 0.0

    assert count("GET", "/v1/jobs", 200) == 1
    assert count("GET", "/v1/jobs/{job_id}", 404) == 1  # the template, never the id
    assert count("GET", "/v1/jobs", 401) == 1
    assert count("GET", "unmatched", 404) == 1
    assert 'crucible_api_request_duration_seconds_count{route="/v1/jobs"} 2.0' in text


def test_token_is_stored_hashed(api: Api) -> None:
    from services.store.db import Database

    db = Database(api.settings.resolved_database_url)
    with db.engine.connect() as conn:
        dump = str(conn.exec_driver_sql("SELECT * FROM tokens").fetchall())
    assert TOKEN not in dump


# --- datasets ---------------------------------------------------------------------------------


def test_builtin_adult_is_listed(api: Api) -> None:
    items = api.get("/v1/datasets").json()["items"]
    adult = next(d for d in items if d["id"] == ADULT)
    assert adult["num_rows"] == 48842 and adult["builtin"]
    assert "CC BY 4.0" in adult["license"]
    assert {"name": "sex", "type": "string", "kind": "categorical"} in adult["columns"]


def test_builtin_image_and_sequence_sets_record_their_array_shapes(api: Api) -> None:
    items = {d["name"]: d for d in api.get("/v1/datasets").json()["items"]}
    assert set(BUILTIN) <= set(items)
    image = next(c for c in items["digits"]["columns"] if c["name"] == "image")
    assert (image["kind"], image["shape"]) == ("array", [8, 8])
    series = next(c for c in items["sines"]["columns"] if c["name"] == "series")
    assert (series["kind"], series["shape"]) == ("array", [32])
    assert items["digits"]["num_rows"] == 1797 and "CC BY 4.0" in items["digits"]["license"]
    assert "CC0" in items["anomalies"]["license"]


def test_csv_upload_becomes_parquet(api: Api) -> None:
    csv = b"x,y,label\n1,2.5,a\n2,,b\n3,1.0,a\n"
    r = api.post("/v1/datasets", files={"file": ("d.csv", csv)}, data={"name": "tiny"})
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["num_rows"], d["format"]) == (3, "csv")
    assert [c["name"] for c in d["columns"]] == ["x", "y", "label"]
    assert len(d["sha256"]) == 64
    assert api.get(f"/v1/datasets/{d['id']}").json()["id"] == d["id"]
    stored = list((api.data_dir / "artifacts" / "datasets").glob("*.parquet"))
    assert len(stored) == 1 and pq.read_table(stored[0]).num_rows == 3


def test_parquet_upload(api: Api) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), buf)
    r = api.post("/v1/datasets", files={"file": ("d.parquet", buf.getvalue())}, data={"name": "pq"})
    assert r.status_code == 201 and r.json()["format"] == "parquet"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"a,b\n1,2\n3\n", "CSV"),
        (b"PAR1 this is not really parquet", "Parquet"),
        (b"a,b\n", "no data rows"),
    ],
)
def test_bad_uploads_leave_nothing(api: Api, content: bytes, needle: str) -> None:
    r = api.post("/v1/datasets", files={"file": ("d.csv", content)}, data={"name": "bad"})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert fields(r) == {("file",)}
    assert api.count("/v1/datasets") == len(BUILTIN)  # the built-in ones only
    assert not list((api.data_dir / "artifacts" / "datasets").iterdir())


def test_upload_needs_a_valid_name(api: Api) -> None:
    r = api.post("/v1/datasets", files={"file": ("d.csv", b"a\n1\n")}, data={"name": "../x"})
    assert r.status_code == 422 and ("name",) in fields(r)


def test_upload_size_limit(api: Api) -> None:
    api.settings.max_upload_bytes = 10
    r = api.post(
        "/v1/datasets", files={"file": ("d.csv", b"a,b\n" + b"1,2\n" * 10)}, data={"name": "big"}
    )
    assert r.status_code == 413
    assert api.count("/v1/datasets") == len(BUILTIN)


def test_unknown_dataset_is_404(api: Api) -> None:
    assert api.get("/v1/datasets/ds_nope").status_code == 404


# --- jobs -------------------------------------------------------------------------------------


def test_valid_job_is_queued(api: Api) -> None:
    r = api.post(
        "/v1/jobs",
        json=spec(
            search={
                "space": {"training.learning_rate": {"loguniform": [1e-4, 1e-2]}},
                "num_trials": 3,
            }
        ),
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("job_")
    shown = api.get(f"/v1/jobs/{job['id']}").json()
    assert shown["status"] == "queued" and shown["spec"]["search"]["num_trials"] == 3
    listed = api.get("/v1/jobs", params={"status": "queued"}).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert api.get(f"/v1/jobs/{job['id']}/trials").json()["items"] == []


@pytest.mark.parametrize(
    ("body", "status", "locs"),
    [
        ({"name": "x"}, 422, {("dataset",)}),
        (spec(model={"architecture": "resnet"}), 422, {("model", "architecture")}),
        (
            spec(training={"learning_rate": 0, "epochs": 0}),
            422,
            {("training", "learning_rate"), ("training", "epochs")},
        ),
        (
            spec(search={"space": {"training.nope": {"choice": [1]}}}),
            422,
            {("search", "space", "training.nope")},
        ),
        (
            spec(search={"space": {"model.dropout": {"choice": []}}}),
            422,
            {("search", "space", "model.dropout")},
        ),
        (spec(dataset={"id": ADULT, "target": "salary"}), 422, {("dataset", "target")}),
        (spec(audit={"sensitive_features": ["gender"]}), 422, {("audit", "sensitive_features", 0)}),
        (spec(dataset={"id": "ds_missing", "target": "income"}), 404, {("dataset", "id")}),
        (
            spec(dataset={"id": ADULT, "target": "income", "split": {"test": 1.2}}),
            422,
            {("dataset", "split", "test")},
        ),
    ],
)
def test_bad_specs_are_rejected_and_create_nothing(
    api: Api, body: dict[str, Any], status: int, locs: set[tuple[Any, ...]]
) -> None:
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == status, r.text
    assert locs <= fields(r), r.json()
    assert api.count("/v1/jobs") == 0


def test_several_semantic_errors_at_once(api: Api) -> None:
    r = api.post(
        "/v1/jobs",
        json=spec(
            dataset={"id": ADULT, "target": "salary"},
            audit={"sensitive_features": ["gender"]},
            search={"metric": "val_loss", "mode": "max"},
        ),
    )
    assert r.status_code == 422
    assert {
        ("dataset", "target"),
        ("audit", "sensitive_features", 0),
        ("search", "mode"),
    } <= fields(r)


def test_body_must_be_json_object(api: Api) -> None:
    r = api.c.post(
        "/v1/jobs", content=b"not json", headers={**api.h, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert api.count("/v1/jobs") == 0


@pytest.mark.parametrize("suffix", ["", "/trials", "/evaluation", "/audit"])
def test_unknown_job_is_404(api: Api, suffix: str) -> None:
    r = api.get(f"/v1/jobs/job_nope{suffix}")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_unknown_job_cannot_be_cancelled_or_promoted(api: Api) -> None:
    assert api.post("/v1/jobs/job_nope/cancel").status_code == 404
    assert api.post("/v1/jobs/job_nope/promote", json={"endpoint": "e"}).status_code == 404


def test_logs_of_a_job_not_yet_on_ray_say_so(api: Api) -> None:
    assert api.get("/v1/jobs/job_nope/logs").status_code == 404
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    r = api.get(f"/v1/jobs/{job_id}/logs")
    assert r.status_code == 200 and r.json()["logs"] == "" and "not submitted" in r.json()["note"]
    assert api.get(f"/v1/jobs/{job_id}/logs", params={"tail": 0}).status_code == 422


def test_cancel_a_queued_job(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = api.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409


def test_results_wait_for_success(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    for suffix in ("/evaluation", "/audit"):
        assert api.get(f"/v1/jobs/{job_id}{suffix}").status_code == 409
    r = api.post(f"/v1/jobs/{job_id}/promote", json={"endpoint": "adult"})
    assert r.status_code == 409


def test_bad_endpoint_name(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    for name in ("Bad Name", "-", "api", "x" * 64):
        r = api.post(f"/v1/jobs/{job_id}/promote", json={"endpoint": name})
        assert r.status_code == 422, name
        assert ("endpoint",) in fields(r)


def test_schema_is_served(api: Api) -> None:
    schema = api.get("/v1/spec/schema").json()
    assert "dataset" in schema["required"]
    assert schema["$defs"]["SearchSpec"]["properties"]["space"]["description"]


# --- the driver's side of the contract ------------------------------------------------------


def post_events(api: Api, job_id: str, events: list[Event], token: str | None = None) -> Any:
    token = token or job_token(api.settings.resolved_secret_key, job_id)
    return api.c.post(
        f"/v1/internal/jobs/{job_id}/events",
        json={"events": [e.model_dump(mode="json") for e in events]},
        headers={"Authorization": f"Bearer {token}"},
    )


RESULT = {
    "best_trial": {"trial_id": "t1", "config": {}, "metrics": {"val_accuracy": 0.8}},
    "evaluation": {"accuracy": 0.81, "confusion_matrix": [[1, 0], [0, 1]]},
    "audit": {"passed": False, "features": {}, "checks": []},
    "bundle": {"uri": "/nowhere", "digest": "0" * 64},
}


def test_events_need_the_jobs_own_token(api: Api) -> None:
    a = api.post("/v1/jobs", json=spec()).json()["id"]
    b = api.post("/v1/jobs", json=spec()).json()["id"]
    ev = [Event(key="job.running", type="job.running")]
    assert post_events(api, a, ev, token=TOKEN).status_code == 401  # an admin token is not it
    assert (
        post_events(api, a, ev, token=job_token(api.settings.resolved_secret_key, b)).status_code
        == 401
    )
    assert api.get(f"/v1/jobs/{a}").json()["status"] == "queued"


def test_progress_then_result(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    events = [
        Event(key="job.running", type="job.running"),
        Event(
            key="trial.started:t1",
            type="trial.started",
            data={"trial_id": "t1", "number": 0, "config": {"model.dropout": 0.1}},
        ),
        *[
            Event(
                key=f"trial.epoch:t1:{e}",
                type="trial.epoch",
                data={"trial_id": "t1", "epoch": e, "metrics": {"val_accuracy": 0.5 + e / 10}},
            )
            for e in (1, 2)
        ],
        Event(key="trial.finished:t1", type="trial.finished", data={"trial_id": "t1"}),
    ]
    assert post_events(api, job_id, events).json() == {"accepted": 5, "new": 5}
    assert post_events(api, job_id, events).json() == {"accepted": 5, "new": 0}
    trials = api.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert [h["epoch"] for h in trials[0]["history"]] == [1, 2]
    assert trials[0]["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

    post_events(api, job_id, [Event(key="job.succeeded", type="job.succeeded", data=RESULT)])
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    assert job["best_trial"]["trial_id"] == "t1"
    assert api.get(f"/v1/jobs/{job_id}/evaluation").json()["accuracy"] == 0.81
    assert api.get(f"/v1/jobs/{job_id}/audit").json()["passed"] is False


def test_failure_is_readable(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    post_events(
        api,
        job_id,
        [
            Event(
                key="job.failed", type="job.failed", data={"error": "target 'y' has a single class"}
            )
        ],
    )
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and "single class" in job["error"]


def test_malformed_events_are_422(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    token = job_token(api.settings.resolved_secret_key, job_id)
    r = api.c.post(
        f"/v1/internal/jobs/{job_id}/events",
        json={"events": [{"type": "nope"}]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 422


def test_cancel_a_running_job_reports_its_duration(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    post_events(api, job_id, [Event(key="job.running", type="job.running")])
    r = api.post(f"/v1/jobs/{job_id}/cancel")  # Ray is unreachable: the cancel still holds
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["duration_s"] >= 0


def read_sse(api: Api, job_id: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    import json

    events: list[dict[str, Any]] = []
    with api.c.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={**api.h, **(headers or {})}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind != "end":
                events.append(json.loads(line[6:]))
    return events


def test_event_stream_replays_history_and_resumes(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    post_events(
        api,
        job_id,
        [
            Event(key="job.running", type="job.running"),
            Event(
                key="trial.epoch:t1:1",
                type="trial.epoch",
                data={"trial_id": "t1", "epoch": 1, "metrics": {"val_loss": 1.0}},
            ),
            Event(key="job.succeeded", type="job.succeeded", data=RESULT),
        ],
    )
    events = read_sse(api, job_id)  # the job is over: the stream replays and closes
    kinds = [(e["type"], e["data"].get("status")) for e in events]
    assert ("job.status", "running") in kinds and ("job.status", "succeeded") in kinds
    assert [e["type"] for e in events].count("trial.epoch") == 1
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Reconnect after the second event: only what came after it.
    rest = read_sse(api, job_id, {"Last-Event-ID": str(ids[1])})
    assert [e["id"] for e in rest] == ids[2:]
    assert (
        api.c.get(f"/v1/jobs/{job_id}/events", headers={**api.h, "Last-Event-ID": "x"}).status_code
        == 422
    )
    assert api.get("/v1/jobs/job_nope/events").status_code == 404


def test_only_a_lost_driver_makes_a_job_resumable(api: Api) -> None:
    job_id = api.post("/v1/jobs", json=spec()).json()["id"]
    r = api.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 409 and "driver was lost" in r.json()["detail"]
    post_events(api, job_id, [Event(key="job.failed", type="job.failed", data={"error": "x"})])
    assert api.post(f"/v1/jobs/{job_id}/resume").status_code == 409  # it failed by itself
    assert api.post("/v1/jobs/job_nope/resume").status_code == 404
