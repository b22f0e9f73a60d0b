"""Promotion gates, overrides, rollback and lineage through the API, on SQLite and PostgreSQL.

Serve is replaced by a recorder that follows the deployer's contract (apply a config, wait for
an application to run), so these tests check what the control plane decides and stores; the
end-to-end test in tests/e2e/test_promotion.py checks the traffic on a real cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.events import Event
from jobs.spec import JobSpec, check_spec
from services.api.app import create_app
from services.config import Settings
from services.core.auth import job_token
from services.core.datasets import builtin_id
from services.core.errors import UpstreamFailed
from services.core.promotion import auto_promote, judge
from services.orchestrator.serve_deployer import (
    EndpointState,
    EndpointTarget,
    ServeDeployer,
    ServingAccess,
)
from services.store.models import ModelVersion

ADULT = builtin_id("adult")
TOKEN = "test-admin-token"


class FakeDeployer(ServeDeployer):
    """Records every config; while ``broken``, no new version starts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.configs: list[dict[str, Any]] = []
        self.broken = False

    def apply(
        self,
        live: list[EndpointState],
        access: ServingAccess,
        candidate: EndpointTarget | None = None,
        staged_split: EndpointState | None = None,
    ) -> None:
        self.configs.append(self.config(live, access, candidate, staged_split))

    def wait_running(self, target: EndpointTarget | str) -> None:
        if self.broken:
            raise UpstreamFailed(f"{target} failed to start: boom")

    def wait_settled(self, live: list[EndpointState], timeout_s: float = 60.0) -> None:
        pass

    def wait_routed(self, name: str, timeout_s: float = 30.0) -> None:
        pass

    def routes(self) -> dict[str, str]:
        """Route prefix → application, as Serve would hold it after the last config."""
        apps = self.configs[-1]["applications"]
        return {a["route_prefix"]: a["name"] for a in apps if a["route_prefix"] is not None}

    def apps(self) -> dict[str, dict[str, Any]]:
        return {a["name"]: a for a in self.configs[-1]["applications"]}


class Api:
    def __init__(self, client: TestClient, settings: Settings, deployer: FakeDeployer) -> None:
        self.c = client
        self.settings = settings
        self.deployer = deployer
        self.h = {"Authorization": f"Bearer {TOKEN}"}

    def get(self, path: str) -> Any:
        return self.c.get(path, headers=self.h)

    def post(self, path: str, **kw: Any) -> Any:
        return self.c.post(path, headers=self.h, **kw)

    def app(self, name: str) -> str:
        """What Serve calls the application the control plane names ``name``."""
        return self.deployer.serve_name(name)

    @staticmethod
    def routes(config: dict[str, Any]) -> dict[str, str | None]:
        """Application → its route (None: off HTTP) in a pushed config."""
        return {a["name"]: a["route_prefix"] for a in config["applications"]}

    def succeeded_job(
        self,
        promotion: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        audit_passed: bool = True,
        checks: list[dict[str, Any]] | None = None,
    ) -> str:
        spec: dict[str, Any] = {"name": "j", "dataset": {"id": ADULT, "target": "income"}}
        if promotion is not None:
            spec["promotion"] = promotion
        r = self.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        job_id = str(r.json()["id"])
        result = {
            "best_trial": {"trial_id": "t1", "config": {}, "metrics": {"val_accuracy": 0.8}},
            "evaluation": evaluation or {"task": "classification", "accuracy": 0.81},
            "audit": {"passed": audit_passed, "checks": checks or []},
            "bundle": {"uri": f"/bundles/{job_id}", "digest": "ab" * 32},
        }
        token = job_token(self.settings.resolved_secret_key, job_id)
        events = [
            Event(key="job.running", type="job.running"),
            Event(key="job.succeeded", type="job.succeeded", data=result),
        ]
        r = self.c.post(
            f"/v1/internal/jobs/{job_id}/events",
            json={"events": [e.model_dump(mode="json") for e in events]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        return job_id


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        bootstrap_token=TOKEN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens there
    )
    app = create_app(settings, reconcile=False)
    deployer = FakeDeployer(settings)
    with TestClient(app) as client:
        app.state.services.deployer = deployer
        yield Api(client, settings, deployer)


GATED = {
    "require": {"accuracy": {"min": 0.8}, "audit_passed": True},
    "max_regression": {"metric": "accuracy", "tolerance": 0.02},
}


def test_gates_pass_and_the_version_moves_blue_green(api: Api) -> None:
    job = api.succeeded_job(GATED)
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "adult"})
    assert r.status_code == 200, r.text
    out = r.json()
    model = out["model_id"]
    assert out["overridden"] is False and all(c["passed"] for c in out["checks"])
    # First the new version beside nothing, off HTTP, then the switch.
    staged, _switched = api.deployer.configs
    assert api.routes(staged) == {api.app(f"adult--{model}"): None}
    assert api.deployer.routes() == {"/adult": api.app(f"adult--{model}")}
    ep = api.get("/v1/endpoints/adult").json()
    assert ep["model_id"] == model
    assert ep["history"][0]["status"] == "succeeded" and ep["history"][0]["kind"] == "promote"
    assert ep["history"][0]["actor"] == "bootstrap"


def test_a_failed_gate_is_a_409_with_its_numbers(api: Api) -> None:
    job = api.succeeded_job(
        GATED, evaluation={"task": "classification", "accuracy": 0.7}, audit_passed=False
    )
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "adult"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"] == "conflict"
    failed = {tuple(f["loc"]): f for f in body["fields"]}
    assert set(failed) == {
        ("promotion", "require", "accuracy"),
        ("promotion", "require", "audit_passed"),
    }
    acc = failed[("promotion", "require", "accuracy")]
    assert (
        acc["value"] == 0.7 and acc["min"] == 0.8 and "0.7 is below the minimum 0.8" in acc["msg"]
    )
    assert api.deployer.configs == []  # nothing was deployed
    assert api.get("/v1/endpoints/adult").status_code == 404


def test_an_override_needs_a_reason_and_is_shown(api: Api) -> None:
    job = api.succeeded_job(GATED, evaluation={"task": "classification", "accuracy": 0.7})
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "adult", "override": True})
    assert r.status_code == 422 and [f["loc"] for f in r.json()["fields"]] == [["reason"]]
    r = api.post(
        f"/v1/jobs/{job}/promote",
        json={"endpoint": "adult", "override": True, "reason": "hotfix; retrain queued"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["overridden"] is True
    ep = api.get("/v1/endpoints/adult").json()
    top = ep["history"][0]
    assert top["status"] == "succeeded" and top["reason"] == "hotfix; retrain queued"
    assert top["actor"] == "bootstrap"
    assert [c["passed"] for c in top["checks"] if c["check"] == "require"] == [False]


def test_not_worse_than_the_serving_model(api: Api) -> None:
    first = api.succeeded_job(evaluation={"task": "classification", "accuracy": 0.9})
    assert api.post(f"/v1/jobs/{first}/promote", json={"endpoint": "e"}).status_code == 200
    serving = api.get("/v1/endpoints/e").json()["model_id"]
    rule = {"max_regression": {"metric": "accuracy", "tolerance": 0.02}}
    worse = api.succeeded_job(rule, evaluation={"task": "classification", "accuracy": 0.85})
    r = api.post(f"/v1/jobs/{worse}/promote", json={"endpoint": "e"})
    assert r.status_code == 409
    (f,) = r.json()["fields"]
    assert f["loc"] == ["promotion", "max_regression", "metric"]
    assert f["serving_model_id"] == serving and f["serving_value"] == 0.9 and f["value"] == 0.85
    close = api.succeeded_job(rule, evaluation={"task": "classification", "accuracy": 0.89})
    assert api.post(f"/v1/jobs/{close}/promote", json={"endpoint": "e"}).status_code == 200
    history = api.get("/v1/endpoints/e").json()["history"]
    assert [h["status"] for h in history] == ["succeeded", "rejected", "succeeded"]


def test_a_version_that_fails_to_start_leaves_the_old_one_serving(api: Api) -> None:
    old = api.post(f"/v1/jobs/{api.succeeded_job()}/promote", json={"endpoint": "e"}).json()
    new_job = api.succeeded_job()
    models_before = len(api.deployer.configs)
    api.deployer.broken = True
    r = api.post(f"/v1/jobs/{new_job}/promote", json={"endpoint": "e"})
    assert r.status_code == 502
    # The candidate was staged beside the old version, then removed; the route never moved.
    staged, _restored = api.deployer.configs[models_before:]
    assert sorted(api.routes(staged).values(), key=str) == ["/e", None]
    assert api.deployer.routes() == {"/e": api.app(f"e--{old['model_id']}")}
    ep = api.get("/v1/endpoints/e").json()
    assert ep["model_id"] == old["model_id"]
    assert ep["history"][0]["status"] == "failed" and "boom" in ep["history"][0]["detail"]


def test_rollback_returns_to_the_previous_version(api: Api) -> None:
    assert api.post("/v1/endpoints/nope/rollback").status_code == 404
    a = api.post(f"/v1/jobs/{api.succeeded_job()}/promote", json={"endpoint": "e"}).json()
    assert api.post("/v1/endpoints/e/rollback").status_code == 409  # nothing before it
    b = api.post(f"/v1/jobs/{api.succeeded_job()}/promote", json={"endpoint": "e"}).json()
    r = api.post("/v1/endpoints/e/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["model_id"] == a["model_id"]
    assert api.deployer.routes() == {"/e": api.app(f"e--{a['model_id']}")}
    # Staged on the side first, like any promotion.
    staged = api.deployer.configs[-2]
    assert api.routes(staged) == {
        api.app(f"e--{b['model_id']}"): "/e",
        api.app(f"e--{a['model_id']}"): None,
    }
    top = api.get("/v1/endpoints/e").json()["history"][0]
    assert top["kind"] == "rollback" and top["previous_model_id"] == b["model_id"]
    # Rolling back again returns to b: the rollback is what replaced it.
    assert api.post("/v1/endpoints/e/rollback").json()["model_id"] == b["model_id"]


def test_model_lineage(api: Api) -> None:
    job = api.succeeded_job(GATED)
    model_id = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e"}).json()["model_id"]
    m = api.get(f"/v1/models/{model_id}").json()
    lin = m["lineage"]
    assert lin["job_id"] == job and lin["bundle_digest"] == "ab" * 32
    assert len(lin["dataset_sha256"]) == 64 and lin["parent_model_id"] is None
    assert lin["code_version"]["package"]  # the installed crucible package
    assert m["spec"]["promotion"]["require"]["accuracy"]["min"] == 0.8
    assert m["metrics"]["test"]["accuracy"] == 0.81
    assert m["audit"] == {"passed": True, "checks": []}


def test_auto_promotion_once_when_the_gates_pass(api: Api) -> None:
    services = api.c.app.state.services  # type: ignore[attr-defined]
    good = api.succeeded_job({**GATED, "auto": True, "auto_endpoint": "auto-e"})
    out = auto_promote(services.db, api.deployer, good)
    assert out is not None and api.get("/v1/endpoints/auto-e").json()["model_id"] == out["model_id"]
    assert auto_promote(services.db, api.deployer, good) is None  # once
    bad = api.succeeded_job(
        {**GATED, "auto": True, "auto_endpoint": "auto-e"},
        evaluation={"task": "classification", "accuracy": 0.5},
    )
    assert auto_promote(services.db, api.deployer, bad) is None
    history = api.get("/v1/endpoints/auto-e").json()["history"]
    assert [(h["kind"], h["status"], h["actor"]) for h in history] == [
        ("auto", "rejected", "auto"),
        ("auto", "succeeded", "auto"),
    ]
    assert api.get("/v1/endpoints/auto-e").json()["model_id"] == out["model_id"]


# --- the spec section -------------------------------------------------------------------------


def test_spec_names_the_field_of_a_metric_the_task_lacks(api: Api) -> None:
    base = {"name": "j", "dataset": {"id": ADULT, "target": "income"}}
    r = api.post(
        "/v1/jobs",
        json={**base, "task": "classification", "promotion": {"require": {"rmse": {"max": 5}}}},
    )
    assert r.status_code == 422
    assert [f["loc"] for f in r.json()["fields"]] == [["promotion", "require", "rmse"]]
    r = api.post("/v1/jobs", json={**base, "promotion": {"require": {"nope": {"min": 1}}}})
    assert r.status_code == 422
    assert ["promotion", "require", "nope"] in [f["loc"] for f in r.json()["fields"]]
    r = api.post("/v1/jobs", json={**base, "promotion": {"auto": True}})
    assert r.status_code == 422 and ["promotion"] in [f["loc"] for f in r.json()["fields"]]


def test_metric_names_per_task() -> None:
    def errors(task: str, promotion: dict[str, Any]) -> list[list[Any]]:
        # An anomaly detection task needs its autoencoder.
        model = {"architecture": "autoencoder"} if task == "anomaly_detection" else {}
        s = JobSpec.model_validate(
            {
                "name": "j",
                "task": task,
                "dataset": {"id": "ds_x", "target": "y"},
                "promotion": promotion,
                **({"model": model} if model else {}),
            }
        )
        return [e.as_dict()["loc"] for e in check_spec(s)]

    assert errors("regression", {"require": {"rmse": {"max": 5}, "r2": {"min": 0.5}}}) == []
    assert errors("regression", {"max_regression": {"metric": "f1", "tolerance": 0}}) == [
        ["promotion", "max_regression", "metric"]
    ]
    assert errors("anomaly_detection", {"require": {"roc_auc": {"min": 0.7}}}) == []
    assert errors("classification", {"require": {"roc_auc": {"min": 0.7}}}) == [
        ["promotion", "require", "roc_auc"]
    ]


def test_lower_errors_are_better_in_the_regression_rule() -> None:
    spec = JobSpec.model_validate(
        {
            "name": "j",
            "task": "regression",
            "dataset": {"id": "ds_x", "target": "y"},
            "promotion": {"max_regression": {"metric": "rmse", "tolerance": 0.5}},
        }
    ).promotion
    serving = ModelVersion(id="mdl_old", metrics={"test": {"rmse": 4.0}})
    assert judge(spec, {"rmse": 4.4}, None, serving)[0]["passed"]
    (check,) = judge(spec, {"rmse": 4.6}, None, serving)
    assert not check["passed"] and "worse by 0.6" in check["msg"]
    assert judge(spec, {"rmse": 1.0}, None, None)[0]["passed"]  # nothing serving yet


def dp_check(value: float) -> dict[str, Any]:
    return {
        "feature": "sex",
        "metric": "demographic_parity_ratio",
        "method": "between_groups",
        "compare": "point",
        "value": value,
        "passed": value >= 0.8,
    }


def test_promotion_shows_fairness_beside_the_serving_model(api: Api) -> None:
    first = api.succeeded_job(checks=[dp_check(0.6)], audit_passed=False)
    r = api.post(f"/v1/jobs/{first}/promote", json={"endpoint": "adult"})
    assert r.status_code == 200, r.text
    assert r.json()["fairness_vs_serving"] == []  # nothing served before
    second = api.succeeded_job(checks=[dp_check(0.9)])
    out = api.post(f"/v1/jobs/{second}/promote", json={"endpoint": "adult"}).json()
    [row] = out["fairness_vs_serving"]
    assert (row["serving"], row["new"], row["change"]) == (0.6, 0.9, "better")
    assert (row["serving_passed"], row["new_passed"]) == (False, True)


def test_a_canary_splits_then_completes_or_rolls_back(api: Api) -> None:
    first = api.post(f"/v1/jobs/{api.succeeded_job()}/promote", json={"endpoint": "e"}).json()
    stable = first["model_id"]
    job = api.succeeded_job()
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e", "traffic": {"new": 10}})
    assert r.status_code == 200, r.text
    canary = r.json()["model_id"]
    # The new version and the split started off HTTP before the route moved.
    staged_split = api.deployer.configs[-2]
    assert api.routes(staged_split) == {
        api.app(f"e--{stable}"): "/e",
        api.app(f"e--{canary}"): None,
        api.app("e--split"): None,
    }
    assert api.deployer.routes() == {"/e": api.app("e--split")}
    apps = api.deployer.apps()
    split = apps[api.app("e--split")]["deployments"][0]["user_config"]["weights"]
    assert split == [[api.app(f"e--{stable}"), 90], [api.app(f"e--{canary}"), 10]]
    assert {api.app(f"e--{stable}"), api.app(f"e--{canary}")} <= set(apps)
    ep = api.get("/v1/endpoints/e").json()
    assert ep["model_id"] == stable and ep["canary"] == {"model_id": canary, "percent": 10}
    assert ep["history"][0]["detail"] == "canary: 10% of requests"

    # A third model waits for the canary to end; the stable one cannot be a canary of itself.
    other = api.succeeded_job()
    assert api.post(f"/v1/jobs/{other}/promote", json={"endpoint": "e"}).status_code == 409

    # Move the share, then give the canary everything: the split goes, the route is direct.
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e", "traffic": {"new": 50}})
    assert r.status_code == 200, r.text
    weights = api.deployer.apps()[api.app("e--split")]["deployments"][0]["user_config"]["weights"]
    assert weights == [[api.app(f"e--{stable}"), 50], [api.app(f"e--{canary}"), 50]]
    assert api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e"}).status_code == 200
    assert api.deployer.routes() == {"/e": api.app(f"e--{canary}")}
    assert set(api.deployer.apps()) == {api.app(f"e--{canary}")}
    ep = api.get("/v1/endpoints/e").json()
    assert ep["model_id"] == canary and ep["canary"] is None

    # A new canary rolled back: all requests return to the version it ran beside.
    r = api.post(f"/v1/jobs/{other}/promote", json={"endpoint": "e", "traffic": {"new": 20}})
    assert r.status_code == 200, r.text
    r = api.post("/v1/endpoints/e/rollback")
    assert r.status_code == 200 and r.json()["model_id"] == canary
    assert api.deployer.routes() == {"/e": api.app(f"e--{canary}")}
    top = api.get("/v1/endpoints/e").json()["history"][0]
    assert top["kind"] == "rollback" and top["detail"] == "canary rolled back"


def test_canary_requests_that_cannot_be_met_change_nothing(api: Api) -> None:
    job = api.succeeded_job()
    # Nothing serves yet: there is nothing to split with.
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e", "traffic": {"new": 10}})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["traffic", "new"]
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e", "traffic": {"new": 0}})
    assert r.status_code == 422
    assert api.deployer.configs == []
    assert api.get("/v1/endpoints/e").status_code == 404


def test_serving_settings_reach_the_deployment_and_bad_ones_are_422(api: Api) -> None:
    job = api.succeeded_job({"serving": {"max_replicas": 3, "max_queued_requests": 7}})
    r = api.post(
        f"/v1/jobs/{job}/promote",
        json={"endpoint": "e", "serving": {"max_batch_size": 16, "min_replicas": 5}},
    )
    assert r.status_code == 422
    assert r.json()["fields"][0]["loc"] == ["serving"]  # max_replicas 3 is below min_replicas 5
    r = api.post(
        f"/v1/jobs/{job}/promote", json={"endpoint": "e", "serving": {"max_batch_size": 0}}
    )
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["serving", "max_batch_size"]
    assert api.deployer.configs == []
    r = api.post(
        f"/v1/jobs/{job}/promote", json={"endpoint": "e", "serving": {"max_batch_size": 32}}
    )
    assert r.status_code == 200, r.text
    d = api.deployer.apps()[api.app(f"e--{r.json()['model_id']}")]["deployments"][0]
    assert d["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 2.0,
    }
    assert d["max_queued_requests"] == 7
    assert d["backpressure_config"] == {"status_code": 503, "retry_after_s": 1}
    assert d["user_config"]["max_batch_size"] == 32
    # The default of 16 requests in flight would never let a batch of 32 form.
    assert d["max_ongoing_requests"] == 32
    assert d["user_config"]["monitor"]["token"]  # the replica's token for its prediction logs
    assert api.get("/v1/endpoints/e").json()["serving"]["max_batch_size"] == 32
