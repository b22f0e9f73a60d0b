"""Serving monitoring through the API, on SQLite and PostgreSQL: prediction logs posted with
the endpoint token, feedback → live accuracy and fairness, drift alert on a shifted stream.

The model is real (a small MLP trained here, saved as a bundle with the profile of its
training inputs, loaded back to predict); the records are what its replica would post. The
endpoint row is made the way a promotion leaves it, without Serve (nothing here routes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.bundle import OutputHead, Predictor, load_bundle, save_bundle
from jobs.drift import reference_profile
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.spec import MLPSpec, ServingSpec
from services.core.auth import endpoint_token
from services.core.datasets import builtin_id
from services.core.ids import new_id
from services.core.projects import DEFAULT_PROJECT_ID
from services.store.models import Endpoint, Job, ModelVersion, PredictionLog
from services.store.repositories import EndpointRepository, JobRepository, ModelRepository
from tests.services.conftest import Client

ADULT = builtin_id("adult")
CLASSES = ["no", "yes"]


def population(n: int, seed: int, shift: float = 0.0) -> list[dict[str, Any]]:
    """Instances as clients send them: men older on average, so the favourable outcome
    ("yes": older than 40) is more frequent for them; ``shift`` moves every age."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(np.array(["F", "M"], object), n)
    age = np.where(sex == "M", rng.normal(45, 10, n), rng.normal(35, 10, n)) + shift
    colour = rng.choice(np.array(["red", "green", "blue"], object), n, p=[0.5, 0.3, 0.2])
    return [
        {"age": round(float(a), 2), "colour": str(c), "sex": str(s)}
        for a, c, s in zip(age, colour, sex, strict=True)
    ]


def truth(instance: dict[str, Any]) -> str:
    return "yes" if instance["age"] > 40 else "no"


def train_bundle(folder: Path, with_reference: bool = True) -> tuple[Path, str]:
    """A small MLP that learns truth() from age, saved as a bundle (like jobs.run does)."""
    rows = population(2000, seed=0)
    cols = {
        "age": np.array([r["age"] for r in rows]),
        "colour": np.array([r["colour"] for r in rows], object),
    }
    kinds: dict[str, Any] = {"age": "numeric", "colour": "categorical"}
    pre = Preprocessor.fit(cols, kinds)
    spec = MLPSpec(hidden_sizes=[8])
    torch.manual_seed(0)
    model = build_model(spec, pre.example_shape, 2)
    x = torch.from_numpy(pre.transform(cols))
    y = torch.tensor([CLASSES.index(truth(r)) for r in rows])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    reference = reference_profile(
        {**cols, "sex": np.array([r["sex"] for r in rows], object)}, kinds
    )
    digest = save_bundle(
        folder,
        model.state_dict(),
        spec,
        pre,
        OutputHead("classification", CLASSES),
        rows[:5],
        {"job_id": "test"},
        reference=reference if with_reference else None,
    )
    return folder, digest


@dataclass
class Served:
    api: Client
    name: str
    model_id: str
    predictor: Predictor

    @property
    def token(self) -> str:
        return endpoint_token(self.api.settings.resolved_secret_key, self.name)

    def records(
        self, instances: list[dict[str, Any]], prefix: str, per_request: int = 1
    ) -> list[dict[str, Any]]:
        """The records a replica would post: ``per_request`` instances per request id."""
        out = self.predictor.predict(instances)
        return [
            {
                "request_id": f"{prefix}-{i // per_request}",
                "index": i % per_request,
                "model_id": self.model_id,
                "ts": time.time(),
                "features": inst,
                "prediction": pred,
                "score": prob["yes"],
                "latency_ms": 1.0 + (i % 10),
            }
            for i, (inst, pred, prob) in enumerate(
                zip(instances, out["predictions"], out["probabilities"], strict=True)
            )
        ]

    def ingest(self, records: list[dict[str, Any]], token: str | None = None) -> Any:
        return self.api.c.post(
            f"/v1/internal/endpoints/{self.name}/predictions",
            json={"records": records},
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    def monitoring(self) -> dict[str, Any]:
        r = self.api.get(f"/v1/endpoints/{self.name}/monitoring")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def events(self) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/endpoints/{self.name}/events")
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


def serve(
    api: Client, tmp_path: Path, name: str, serving: ServingSpec | None, reference: bool = True
) -> Served:
    folder, digest = train_bundle(tmp_path / f"bundle-{name}", with_reference=reference)
    db = api.c.app.state.services.db  # type: ignore[attr-defined]
    with db.session() as s:
        job = JobRepository(s).add(
            Job(
                id=new_id("job"),
                name="j",
                status="succeeded",
                spec={
                    "name": "j",
                    "dataset": {"id": ADULT, "target": "income"},
                    "audit": {"sensitive_features": ["sex"]},
                },
                dataset_id=ADULT,
                project_id=DEFAULT_PROJECT_ID,
                bundle_uri=str(folder),
                bundle_digest=digest,
                audit={"passed": True, "positive_label": "yes", "checks": []},
            )
        )
        model = ModelRepository(s).add(
            ModelVersion(
                id=new_id("mdl"),
                job_id=job.id,
                trial_key="t",
                dataset_id=ADULT,
                dataset_sha256="0" * 64,
                bundle_uri=str(folder),
                bundle_digest=digest,
                metrics={},
                audit_passed=True,
            )
        )
        EndpointRepository(s).add(
            Endpoint(
                name=name,
                model_id=model.id,
                status="running",
                serving=serving.model_dump(mode="json") if serving is not None else None,
            )
        )
    return Served(api, name, model.id, load_bundle(folder, digest))


@pytest.fixture
def served(client: Client, tmp_path: Path) -> Served:
    return serve(client, tmp_path, "adult", None)


def test_feedback_gives_live_accuracy_and_fairness(served: Served) -> None:
    instances = population(300, seed=1)
    # 100 requests of one instance, then 50 of four.
    records = served.records(instances[:100], "single") + served.records(
        instances[100:], "batch", per_request=4
    )
    r = served.ingest(records)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 300, "stored": 300}

    # Every other prediction gets a label: the truth, wrong on every seventh (noisy labels, so
    # the live accuracy of this well-fitted model is not simply 1).
    labelled = list(range(0, 300, 2))
    label = {i: truth(instances[i]) if i % 7 else "x" for i in labelled}
    items = [
        {"request_id": records[i]["request_id"], "index": records[i]["index"], "label": label[i]}
        for i in labelled
    ]
    # Single-instance requests may leave the index out; unknown ids are counted, not stored.
    for item in items[:10]:
        del item["index"]
    items += [{"request_id": "never-logged", "label": "yes"}, {"request_id": "single-0", "index": 3,
                                                               "label": "no"}]  # fmt: skip
    r = served.api.post("/v1/endpoints/adult/feedback", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json() == {"matched": len(labelled), "unmatched": 2}

    fig = served.monitoring()
    assert fig["logged"] == 300 and fig["window"] == ServingSpec().monitoring_window
    (m,) = fig["models"]
    assert m["model_id"] == served.model_id and m["requests"] == 300
    right = sum(records[i]["prediction"] == label[i] for i in labelled)
    assert m["labelled"] == len(labelled)
    assert m["accuracy"] == pytest.approx(right / len(labelled))
    assert 0.75 < m["accuracy"] < 0.9  # a model that learned something, not a constant
    preds = [rec["prediction"] for rec in records]
    assert m["predictions"]["counts"] == {c: preds.count(c) for c in CLASSES if c in preds}
    latency = [rec["latency_ms"] for rec in records]
    assert m["latency_ms"]["p95"] == pytest.approx(np.percentile(latency, 95))

    sex = m["fairness"]["sex"]
    rates = {}
    for g in ("F", "M"):
        rows = [i for i, inst in enumerate(instances) if inst["sex"] == g]
        rates[g] = sum(preds[i] == "yes" for i in rows) / len(rows)
        rows_l = [i for i in labelled if instances[i]["sex"] == g]
        acc = sum(preds[i] == label[i] for i in rows_l) / len(rows_l)
        assert sex["groups"][g]["count"] == len(rows)
        assert sex["groups"][g]["selection_rate"] == pytest.approx(rates[g])
        assert sex["groups"][g]["accuracy"] == pytest.approx(acc)
    tpr, fpr = {}, {}
    for g in ("F", "M"):
        rows_l = [i for i in labelled if instances[i]["sex"] == g]
        pos = [i for i in rows_l if label[i] == "yes"]
        neg = [i for i in rows_l if label[i] != "yes"]
        tpr[g] = sum(preds[i] == "yes" for i in pos) / len(pos)
        fpr[g] = sum(preds[i] == "yes" for i in neg) / len(neg)
        assert sex["groups"][g]["true_positive_rate"] == pytest.approx(tpr[g])
        assert sex["groups"][g]["false_positive_rate"] == pytest.approx(fpr[g])
    assert sex["equalized_odds_difference"] == pytest.approx(
        max(abs(tpr["M"] - tpr["F"]), abs(fpr["M"] - fpr["F"]))
    )
    assert rates["M"] > rates["F"]
    assert sex["demographic_parity_difference"] == pytest.approx(rates["M"] - rates["F"])
    assert sex["demographic_parity_ratio"] == pytest.approx(rates["F"] / rates["M"])
    # Same inputs as training: no drift, no alert, no event.
    assert m["drift"]["status"] == "ok"
    assert set(m["drift"]["features"]) == {"age", "colour", "sex"}
    assert all(not f["drifted"] for f in m["drift"]["features"].values())
    assert fig["alert"] is None and served.events() == []

    # A second label replaces the first: the true ones this time.
    fixed = [{**it, "label": truth(instances[i])} for i, it in zip(labelled, items, strict=False)]
    r = served.api.post("/v1/endpoints/adult/feedback", json={"items": fixed})
    assert r.json() == {"matched": len(labelled), "unmatched": 0}
    m2 = served.monitoring()["models"][0]
    right = sum(preds[i] == truth(instances[i]) for i in labelled)
    assert m2["accuracy"] == pytest.approx(right / len(labelled)) and m2["accuracy"] > 0.9

    text = served.api.get("/metrics").text
    line = f'crucible_endpoint_live_accuracy{{endpoint="adult",model_id="{served.model_id}"}}'
    assert line in text
    assert 'crucible_endpoint_fairness{endpoint="adult"' in text
    assert 'metric="demographic_parity_ratio"' in text
    assert 'crucible_endpoint_drift_alert{endpoint="adult"} 0.0' in text


def test_a_shifted_input_stream_raises_the_drift_alert(client: Client, tmp_path: Path) -> None:
    served = serve(client, tmp_path, "adult", ServingSpec(monitoring_window=300))
    assert served.ingest(served.records(population(300, seed=2), "plain")).status_code == 200
    fig = served.monitoring()
    assert fig["alert"] is None and fig["models"][0]["drift"]["status"] == "ok"
    assert served.events() == []

    # Ages 25 years older: the window (the last 300) is all shifted rows.
    r = served.ingest(served.records(population(300, seed=3, shift=25), "older"))
    assert r.status_code == 200, r.text
    # Judged after the ingest (within the throttle second), before anyone asks.
    deadline = time.monotonic() + 10
    while not served.events() and time.monotonic() < deadline:
        time.sleep(0.1)
    (raised,) = served.events()
    assert raised["type"] == "drift_alert_raised"
    assert raised["data"]["threshold"] == 0.2
    assert set(raised["data"]["features"]) == {"age"}
    assert raised["data"]["features"]["age"] > 0.2
    fig = served.monitoring()
    assert fig["alert"] == "drift"
    drift = fig["models"][0]["drift"]
    assert drift["status"] == "drifted" and drift["rows"] == 300
    assert drift["features"]["age"]["drifted"] and drift["features"]["age"]["psi"] > 0.2
    assert not drift["features"]["colour"]["drifted"]
    assert not drift["features"]["sex"]["drifted"]
    text = client.get("/metrics").text
    assert 'crucible_endpoint_drift_alert{endpoint="adult"} 1.0' in text
    assert (
        f'crucible_endpoint_feature_psi{{endpoint="adult",feature="age",model_id="{served.model_id}"}}'
        in text
    )
    with client.c.app.state.services.db.session() as s:  # type: ignore[attr-defined]
        row = EndpointRepository(s).get("adult")
        assert row is not None and row.alert == "drift"

    # Asking again does not raise it twice.
    assert served.monitoring()["alert"] == "drift" and len(served.events()) == 1

    # Back to the training distribution: the alert clears, with its event.
    served.ingest(served.records(population(300, seed=4), "back"))
    fig = served.monitoring()
    assert fig["alert"] is None
    assert [e["type"] for e in served.events()] == ["drift_alert_raised", "drift_alert_cleared"]
    assert (
        client.get("/v1/endpoints/adult/events?after=" + str(raised["id"])).json()["items"][0][
            "type"
        ]
        == "drift_alert_cleared"
    )


def test_too_few_rows_or_no_reference_raise_nothing(client: Client, tmp_path: Path) -> None:
    few = serve(client, tmp_path, "few", None)
    few.ingest(few.records(population(99, seed=5, shift=25), "older"))
    drift = few.monitoring()["models"][0]["drift"]
    assert drift["status"] == "insufficient_rows"
    assert drift["features"]["age"]["psi"] > 0.2 and not drift["features"]["age"]["drifted"]
    assert few.monitoring()["alert"] is None

    blind = serve(client, tmp_path, "blind", None, reference=False)
    blind.ingest(blind.records(population(200, seed=6, shift=25), "older"))
    fig = blind.monitoring()
    assert fig["models"][0]["drift"]["status"] == "unknown" and fig["alert"] is None
    assert fig["models"][0]["requests"] == 200


def test_a_wrong_token_is_401_and_stores_nothing(served: Served) -> None:
    records = served.records(population(5, seed=7), "r")
    other = endpoint_token(served.api.settings.resolved_secret_key, "other")
    for token in (other, "nope", "test-admin-token"):
        r = served.ingest(records, token=token)
        assert r.status_code == 401, r.text
    r = served.api.c.post("/v1/internal/endpoints/adult/predictions", json={"records": records})
    assert r.status_code == 401
    # A user token does not do for a replica's route, nor an endpoint token for user routes.
    r = served.api.c.get(
        "/v1/endpoints/adult/monitoring", headers={"Authorization": f"Bearer {served.token}"}
    )
    assert r.status_code == 401
    assert served.monitoring()["logged"] == 0


def test_non_finite_numbers_are_stored_as_missing(served: Served) -> None:
    """Python's JSON parser (the replica's and ours) takes NaN and Infinity; PostgreSQL's JSON
    cannot hold them: they are stored as null, the batch is not refused for them."""
    records = served.records(population(3, seed=13), "nan")
    records[0]["features"]["age"] = float("nan")
    records[1]["score"] = float("inf")
    body = json.dumps({"records": records})  # NaN / Infinity tokens, as json.dumps writes them
    assert "NaN" in body and "Infinity" in body
    r = served.api.c.post(
        "/v1/internal/endpoints/adult/predictions",
        content=body,
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 3
    db = served.api.c.app.state.services.db  # type: ignore[attr-defined]
    with db.session() as s:
        rows = {r.request_id: r for r in s.query(PredictionLog).all()}
    assert rows["nan-0"].features["age"] is None and rows["nan-1"].score is None


def test_a_resent_batch_is_stored_once(served: Served) -> None:
    records = served.records(population(20, seed=8), "r", per_request=5)
    assert served.ingest(records).json() == {"accepted": 20, "stored": 20}
    assert served.ingest(records).json() == {"accepted": 20, "stored": 0}
    more = served.records(population(25, seed=9), "r", per_request=5)  # 5 of them new
    assert served.ingest(more).json() == {"accepted": 25, "stored": 5}
    assert served.monitoring()["logged"] == 25


def test_bad_requests_change_nothing(served: Served) -> None:
    records = served.records(population(10, seed=10), "r")
    assert served.ingest(records).status_code == 200

    def fields(r: Any) -> list[list[Any]]:
        return [f["loc"] for f in r.json()["fields"]]

    # Unknown endpoint: its own valid token, still 404; user routes 404 too.
    ghost = Served(served.api, "ghost", served.model_id, served.predictor)
    assert ghost.ingest(records).status_code == 404
    assert served.api.post("/v1/endpoints/ghost/feedback", json={"items": [
        {"request_id": "r-0", "label": "yes"}]}).status_code == 404  # fmt: skip
    assert served.api.get("/v1/endpoints/ghost/monitoring").status_code == 404
    assert served.api.get("/v1/endpoints/ghost/events").status_code == 404

    bad = [dict(rec) for rec in served.records(population(3, seed=11), "new")]
    bad[1]["request_id"] = "x" * 65
    r = served.ingest(bad)
    assert r.status_code == 422 and fields(r) == [["records", 1, "request_id"]]
    bad[1]["request_id"] = "ok"
    bad[2]["latency_ms"] = -1
    del bad[0]["features"]
    r = served.ingest(bad)
    assert r.status_code == 422
    assert fields(r) == [["records", 0, "features"], ["records", 2, "latency_ms"]]
    r = served.ingest([{**records[0], "request_id": f"n{i}"} for i in range(10_001)])
    assert r.status_code == 422 and fields(r) == [["records"]]
    assert served.monitoring()["logged"] == 10

    r = served.api.post(
        "/v1/endpoints/adult/feedback",
        json={"items": [{"request_id": "r-0", "label": "yes"}, {"request_id": "r-1"}]},
    )
    assert r.status_code == 422 and fields(r) == [["items", 1, "label"]]
    r = served.api.post(
        "/v1/endpoints/adult/feedback", json={"items": [{"request_id": "r-0", "label": None}]}
    )
    assert r.status_code == 422 and fields(r)[0][:3] == ["items", 0, "label"]
    r = served.api.post(
        "/v1/endpoints/adult/feedback",
        json={"items": [{"request_id": "r-0", "index": -1, "label": "no"}]},
    )
    assert r.status_code == 422 and fields(r) == [["items", 0, "index"]]
    r = served.api.post("/v1/endpoints/adult/feedback", json={"items": []})
    assert r.status_code == 422 and fields(r) == [["items"]]
    r = served.api.post(
        "/v1/endpoints/adult/feedback",
        json={"items": [{"request_id": "r-0", "label": "yes"}] * 10_001},
    )
    assert r.status_code == 422 and fields(r) == [["items"]]
    m = served.monitoring()["models"][0]
    assert m["labelled"] == 0 and m["accuracy"] is None


def test_sdk_and_cli(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK and the CLI on the same API (in process: the SDK's HTTP client is the app's
    test client)."""
    from typer.testing import CliRunner

    from services import cli
    from services.cli import serving
    from services.client import Crucible

    instances = population(120, seed=12)
    records = served.records(instances, "r", per_request=2)
    assert served.ingest(records).status_code == 200
    sdk = Crucible("http://testserver", "test-admin-token")
    sdk.http = served.api.c
    sdk.http.headers["Authorization"] = "Bearer test-admin-token"
    # feedback and endpoints monitoring/events call the _client the serving module imported.
    monkeypatch.setattr(serving, "_client", lambda url, token: sdk)

    # JSON Lines for the first 60, sent 40 a call by the SDK; CSV for the rest.
    lines = [
        json.dumps({"request_id": r["request_id"], "index": r["index"], "label": truth(inst)})
        for r, inst in zip(records[:60], instances[:60], strict=True)
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n\n")
    csv_rows = ["request_id,index,label"] + [
        f"{r['request_id']},{r['index']},{truth(inst)}"
        for r, inst in zip(records[60:], instances[60:], strict=True)
    ]
    (tmp_path / "labels.csv").write_text("\n".join([*csv_rows, "nope,0,yes"]) + "\n")
    sdk.FEEDBACK_CHUNK = 40
    run = CliRunner().invoke
    r = run(cli.app, ["feedback", "adult", str(tmp_path / "labels.jsonl"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"matched": 60, "unmatched": 0}
    r = run(cli.app, ["feedback", "adult", str(tmp_path / "labels.csv")])
    assert r.exit_code == 0, r.output
    assert "60 labels matched logged predictions, 1 did not" in r.output

    fig = sdk.monitoring("adult")
    right = sum(r["prediction"] == truth(inst) for r, inst in zip(records, instances, strict=True))
    assert fig["models"][0]["labelled"] == 120
    assert fig["models"][0]["accuracy"] == pytest.approx(right / 120)
    r = run(cli.app, ["endpoints", "monitoring", "adult", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["models"][0]["accuracy"] == fig["models"][0]["accuracy"]
    r = run(cli.app, ["endpoints", "monitoring", "adult"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert served.model_id in r.output and "no alert" in r.output
    assert f"live accuracy {fig['models'][0]['accuracy']:.3f} (120 labelled)" in r.output
    assert "fairness sex: DP diff" in r.output and "age" in r.output
    assert sdk.endpoint_events("adult") == []
    r = run(cli.app, ["endpoints", "events", "adult", "--json"])
    assert r.exit_code == 0 and json.loads(r.output) == []

    # A bad file names the line; nothing is sent.
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{oops\n")
    r = run(cli.app, ["feedback", "adult", str(tmp_path / "bad.jsonl")], terminal_width=200)
    assert r.exit_code == 2 and "line 2" in r.output
    r = run(cli.app, ["feedback", "ghost", str(tmp_path / "labels.jsonl")], terminal_width=200)
    assert r.exit_code == 2 and "no endpoint 'ghost'" in r.output
