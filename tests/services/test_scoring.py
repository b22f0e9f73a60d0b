"""Batch scoring through the API, on SQLite and PostgreSQL, without a Ray cluster: requests
checked in full before a run exists, the driver's reports, results, cancellation.

The Ray side (jobs/score.py) is tested on a real local Ray in tests/jobs/test_score.py, and the
whole path, with results compared to the live endpoint, in tests/e2e/test_scoring.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.bundle import OutputHead, save_bundle
from jobs.events import Event
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.spec import MLPSpec
from services.core.auth import job_token
from services.core.errors import Invalid
from services.core.promotion import register_model
from services.core.scoring import ScoringRequest, check_concurrency, scoring_token
from services.store.models import Endpoint
from tests.services.conftest import Client


def rows(n: int = 40, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "x": rng.normal(size=n),
            "c": rng.choice(["a", "b"], n).tolist(),
            "y": rng.choice(["no", "yes"], n).tolist(),
        }
    )


def make_bundle(folder: Path) -> str:
    cols = {"x": np.array([0.0, 1.0, 2.0]), "c": np.array(["a", "b", "a"], dtype=object)}
    pre = Preprocessor.fit(cols, {"x": "numeric", "c": "categorical"})
    spec = MLPSpec(hidden_sizes=[4])
    model = build_model(spec, pre.example_shape, 2)
    return save_bundle(
        folder,
        model.state_dict(),
        spec,
        pre,
        OutputHead("classification", ["no", "yes"]),
        [{"x": 1.0, "c": "a"}],
        {"job_id": "job_t"},
    )


def registered_model(client: Client, tmp_path: Path, dataset_id: str) -> str:
    """A model version as a succeeded job leaves it: a real bundle, registered by the same
    code a promotion runs."""
    spec = {"name": "j", "dataset": {"id": dataset_id, "target": "y"}}
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    folder = tmp_path / "bundle"
    result = {
        "best_trial": {"trial_id": "t1", "config": {}, "metrics": {"val_accuracy": 0.8}},
        "evaluation": {"task": "classification", "accuracy": 0.8},
        "audit": {"passed": True, "checks": []},
        "bundle": {"uri": str(folder), "digest": make_bundle(folder)},
    }
    token = job_token(client.settings.resolved_secret_key, job_id)
    events = [
        Event(key="job.running", type="job.running"),
        Event(key="job.succeeded", type="job.succeeded", data=result),
    ]
    r = client.c.post(
        f"/v1/internal/jobs/{job_id}/events",
        json={"events": [e.model_dump(mode="json") for e in events]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return register_model(client.c.app.state.services.db, job_id)  # type: ignore[attr-defined]


@pytest.fixture
def setup(client: Client, tmp_path: Path) -> tuple[Client, str, str]:
    dataset_id = client.upload("scoring", rows())
    model_id = registered_model(client, tmp_path, dataset_id)
    with client.c.app.state.services.db.session() as s:  # type: ignore[attr-defined]
        s.add(Endpoint(name="churn", model_id=model_id, status="running"))
    return client, dataset_id, model_id


def runs(client: Client) -> int:
    return int(client.get("/v1/scoring").json()["total"])


def report(client: Client, run_id: str, body: dict[str, Any], token: str | None = None) -> Any:
    token = token or scoring_token(client.settings.resolved_secret_key, run_id)
    return client.c.post(
        f"/v1/internal/scoring/{run_id}/report",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )


def test_unknown_endpoint_model_or_dataset_is_404_and_nothing_is_created(
    setup: tuple[Client, str, str],
) -> None:
    client, dataset_id, model_id = setup
    r = client.post("/v1/endpoints/nope/batch", json={"dataset_id": dataset_id})
    assert r.status_code == 404 and "no endpoint 'nope'" in r.json()["detail"]
    r = client.post("/v1/models/mdl_nope/score", json={"dataset_id": dataset_id})
    assert r.status_code == 404 and "no model 'mdl_nope'" in r.json()["detail"]
    r = client.post(f"/v1/models/{model_id}/score", json={"dataset_id": "ds_nope"})
    assert r.status_code == 404
    assert r.json()["fields"] == [{"loc": ["dataset_id"], "msg": "no dataset 'ds_nope'"}]
    assert client.get("/v1/scoring/scr_nope").status_code == 404
    assert runs(client) == 0


def test_a_dataset_without_a_model_input_is_422_naming_it(
    setup: tuple[Client, str, str],
) -> None:
    client, _, model_id = setup
    other = client.upload("no_c", rows().drop_columns(["c"]))
    r = client.post("/v1/endpoints/churn/batch", json={"dataset_id": other})
    assert r.status_code == 422, r.text
    fields = r.json()["fields"]
    assert [f["loc"] for f in fields] == [["dataset_id"]]
    assert "no column 'c', an input of the model" in fields[0]["msg"]
    # A column of the right name that the model cannot read as it was trained to.
    wrong = client.upload("c_numeric", rows().set_column(2, "c", pa.array([1.0] * 40)))
    r = client.post(f"/v1/models/{model_id}/score", json={"dataset_id": wrong})
    assert r.status_code == 422
    assert "the model reads it as categorical" in r.json()["fields"][0]["msg"]
    assert runs(client) == 0


def test_bad_options_are_422_naming_the_field(setup: tuple[Client, str, str]) -> None:
    client, dataset_id, model_id = setup
    url = f"/v1/models/{model_id}/score"
    r = client.post(url, json={"dataset_id": dataset_id, "passthrough": ["id", "nope", "row"]})
    assert r.status_code == 422
    assert [f["loc"] for f in r.json()["fields"]] == [["passthrough", 1], ["passthrough", 2]]
    for body in (
        {"dataset_id": dataset_id, "batch_size": 0},
        {"dataset_id": dataset_id, "concurrency": 0},
        {"dataset_id": dataset_id, "surprise": 1},
        {},
    ):
        r = client.post(url, json=body)
        assert r.status_code == 422, body
    assert runs(client) == 0
    # More actors than the cluster has CPUs would wait forever.
    with pytest.raises(Invalid) as exc:
        check_concurrency(ScoringRequest(dataset_id="d", concurrency=5), [{"CPU": 2}, {"CPU": 2}])
    assert exc.value.fields[0]["loc"] == ["concurrency"]
    check_concurrency(ScoringRequest(dataset_id="d", concurrency=4), [{"CPU": 2}, {"CPU": 2}])


def test_a_run_is_queued_with_the_endpoints_live_model_and_follows_its_reports(
    setup: tuple[Client, str, str],
) -> None:
    client, dataset_id, model_id = setup
    r = client.post(
        "/v1/endpoints/churn/batch",
        json={"dataset_id": dataset_id, "batch_size": 16, "passthrough": ["id"]},
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued"
    run_id = r.json()["id"]
    assert run_id.startswith("scr_")
    view = client.get(f"/v1/scoring/{run_id}").json()
    assert view["model_id"] == model_id and view["endpoint"] == "churn"
    assert view["request"] == {
        "dataset_id": dataset_id,
        "concurrency": 2,
        "batch_size": 16,
        "passthrough": ["id"],
    }
    assert view["progress"] == {"rows_done": 0, "rows_total": 40, "fraction": 0.0}
    assert client.get(f"/v1/scoring/{run_id}/result").status_code == 409

    # Only the run's own token reports on it.
    other = scoring_token(client.settings.resolved_secret_key, "scr_other")
    assert report(client, run_id, {"status": "running"}, token=other).status_code == 401
    job_tok = job_token(client.settings.resolved_secret_key, run_id)
    assert report(client, run_id, {"status": "running"}, token=job_tok).status_code == 401

    assert report(client, run_id, {"status": "running", "rows_done": 16}).json() == {
        "applied": True
    }
    report(client, run_id, {"status": "running", "rows_done": 8})  # late, out of order
    view = client.get(f"/v1/scoring/{run_id}").json()
    assert view["status"] == "running" and view["progress"]["rows_done"] == 16

    # The result is where the control plane put it, whatever the driver says.
    folder = client.settings.resolved_artifact_root / "scoring" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    out = pa.table(
        {
            "row": pa.array(range(40), pa.int64()),
            "id": rows().column("id"),
            "prediction": ["yes"] * 39 + ["no"],
            "probabilities": [{"no": 0.25, "yes": 0.75}] * 39 + [{"no": float("nan"), "yes": 0.5}],
        }
    )
    pq.write_table(out, folder / "result.parquet")
    r = report(client, run_id, {"status": "succeeded", "rows_done": 40, "rows_total": 40})
    assert r.json() == {"applied": True}
    view = client.get(f"/v1/scoring/{run_id}").json()
    assert view["status"] == "succeeded" and view["output_uri"] == str(folder / "result.parquet")
    assert view["progress"]["fraction"] == 1.0
    # A settled run takes no more reports.
    assert report(client, run_id, {"status": "failed", "error": "x"}).json() == {"applied": False}

    r = client.get(f"/v1/scoring/{run_id}/result")
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    assert r.content == (folder / "result.parquet").read_bytes()
    page = client.get(f"/v1/scoring/{run_id}/result", params={"format": "json", "limit": 3})
    assert page.json()["total"] == 40 and [x["row"] for x in page.json()["items"]] == [0, 1, 2]
    last = client.get(
        f"/v1/scoring/{run_id}/result", params={"format": "json", "offset": 38, "limit": 5}
    ).json()["items"]
    assert [x["row"] for x in last] == [38, 39]
    assert last[1]["probabilities"] == {"no": None, "yes": 0.5}  # NaN has no JSON form
    listed = client.get("/v1/scoring", params={"model_id": model_id}).json()
    assert [x["id"] for x in listed["items"]] == [run_id]


def test_success_without_a_result_file_fails_the_run(setup: tuple[Client, str, str]) -> None:
    client, dataset_id, model_id = setup
    run_id = client.post(f"/v1/models/{model_id}/score", json={"dataset_id": dataset_id}).json()[
        "id"
    ]
    report(client, run_id, {"status": "succeeded", "rows_done": 40, "rows_total": 40})
    view = client.get(f"/v1/scoring/{run_id}").json()
    assert view["status"] == "failed" and "no result file" in view["error"]
    assert view["endpoint"] is None


def test_cancel(setup: tuple[Client, str, str]) -> None:
    client, dataset_id, model_id = setup
    run_id = client.post(f"/v1/models/{model_id}/score", json={"dataset_id": dataset_id}).json()[
        "id"
    ]
    r = client.post(f"/v1/scoring/{run_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/v1/scoring/{run_id}/cancel").status_code == 409
    assert report(client, run_id, {"status": "running", "rows_done": 5}).json() == {
        "applied": False
    }
    assert client.get(f"/v1/scoring/{run_id}").json()["progress"]["rows_done"] == 0


def test_sdk_and_cli(
    setup: tuple[Client, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK and the CLI on the same API (in process: the SDK's HTTP client is the app's
    test client)."""
    import json

    from typer.testing import CliRunner

    from services import cli
    from services.cli import scoring
    from services.client import Crucible

    client, dataset_id, model_id = setup
    sdk = Crucible("http://testserver", "unused")
    sdk.http = client.c
    sdk.http.headers["Authorization"] = client.h["Authorization"]
    # The scoring commands call the _client their own module imported.
    monkeypatch.setattr(scoring, "_client", lambda url, token: sdk)
    run = CliRunner().invoke

    r = run(cli.app, ["score", "churn", dataset_id, "-p", "id", "--batch-size", "8", "--json"])
    assert r.exit_code == 0, r.output
    run_id = json.loads(r.output)["id"]
    assert sdk.scoring_run(run_id)["request"]["batch_size"] == 8
    r = run(cli.app, ["score", model_id, dataset_id, "--model"])
    assert r.exit_code == 0 and "queued" in r.output, r.output
    r = run(cli.app, ["score", "nope", dataset_id])
    assert r.exit_code == 2 and "no endpoint 'nope'" in r.output

    folder = client.settings.resolved_artifact_root / "scoring" / run_id
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"row": [0], "prediction": ["no"]}), folder / "result.parquet")
    report(client, run_id, {"status": "succeeded", "rows_done": 40, "rows_total": 40})
    r = run(cli.app, ["scoring", "show", run_id], terminal_width=200)
    assert r.exit_code == 0 and f"{run_id}  succeeded  40/40 rows" in r.output, r.output
    r = run(cli.app, ["scoring", "result", run_id, "-o", str(tmp_path / "out.parquet")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out.parquet").read_bytes() == (folder / "result.parquet").read_bytes()
    assert [x["id"] for x in sdk.scoring_runs("succeeded")] == [run_id]
    assert sdk.scoring_rows(run_id)["items"] == [{"row": 0, "prediction": "no"}]
    r = run(cli.app, ["scoring", "list"], terminal_width=200)
    assert r.exit_code == 0 and r.output.count("scr_") == 2
