"""Projects: isolation (another project's id is a 404, lists show only one's own), creation
rules, membership, and quotas; through the HTTP API on SQLite and PostgreSQL.

Serve is the recorder of tests/services/test_promotion.py, so jobs can succeed and be promoted
without a cluster (jobs queue: no Ray is reachable).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.events import Event
from services.api.app import create_app
from services.config import Settings
from services.core.auth import job_token
from services.core.datasets import builtin_id
from services.core.ids import new_id
from services.core.tokens import ExpirySync
from services.store.db import Database
from services.store.models import ScoringRun
from tests.services.test_promotion import FakeDeployer

ADMIN = "test-admin-token"
ADULT = builtin_id("adult")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def table_bytes(rows: int = 120) -> bytes:
    buf = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "x": [float(i % 7) for i in range(rows)],
                "y": [i % 2 for i in range(rows)],
                "pred": [(i // 2) % 2 for i in range(rows)],
                "sex": ["a" if i % 3 else "b" for i in range(rows)],
            }
        ),
        buf,
    )
    return buf.getvalue()


@dataclass
class Api:
    c: TestClient
    settings: Settings
    deployer: FakeDeployer
    db: Database
    tokens: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)

    def call(self, who: str, method: str, path: str, **kw: Any) -> Any:
        token = ADMIN if who == "admin" else self.tokens[who]
        return self.c.request(method, path, headers=bearer(token), **kw)

    def project(self, name: str, **quotas: Any) -> dict[str, Any]:
        r = self.call("admin", "POST", "/v1/projects", json={"name": name, **quotas})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def user(self, name: str, role: str, projects: list[str]) -> str:
        r = self.call(
            "admin", "POST", "/v1/users", json={"name": name, "role": role, "projects": projects}
        )
        assert r.status_code == 201, r.text
        self.user_ids[name] = r.json()["id"]
        r = self.call("admin", "POST", "/v1/tokens", json={"name": name, "user_id": r.json()["id"]})
        assert r.status_code == 201, r.text
        self.tokens[name] = r.json()["token"]
        return str(self.user_ids[name])

    def upload(self, who: str, project: str | None, name: str = "d") -> Any:
        data = {"name": name, **({"project": project} if project else {})}
        return self.call(
            who, "POST", "/v1/datasets", files={"file": ("d.parquet", table_bytes())}, data=data
        )

    def submit(self, who: str, dataset: str, **extra: Any) -> Any:
        spec = {"name": "j", "dataset": {"id": dataset, "target": "y"}, **extra}
        return self.call(who, "POST", "/v1/jobs", json=spec)

    def succeed(self, job_id: str) -> None:
        """The job's driver reports success, as a real one would."""
        result = {
            "best_trial": {"trial_id": "t1", "config": {}, "metrics": {"val_accuracy": 0.8}},
            "evaluation": {"task": "classification", "accuracy": 0.81},
            "audit": {"passed": True, "checks": []},
            "bundle": {"uri": f"/bundles/{job_id}", "digest": "ab" * 32},
        }
        events = [
            Event(key="job.running", type="job.running"),
            Event(key="job.succeeded", type="job.succeeded", data=result),
        ]
        token = job_token(self.settings.resolved_secret_key, job_id)
        r = self.c.post(
            f"/v1/internal/jobs/{job_id}/events",
            json={"events": [e.model_dump(mode="json") for e in events]},
            headers=bearer(token),
        )
        assert r.status_code == 200, r.text


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        bootstrap_token=ADMIN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens there
    )
    app = create_app(settings, reconcile=False)
    deployer = FakeDeployer(settings)
    with TestClient(app) as client:
        app.state.services.deployer = deployer
        api = Api(client, settings, deployer, Database(settings.resolved_database_url))
        yield api
        api.db.engine.dispose()


@dataclass
class Owned:
    """One of each kind of resource, all in one project."""

    dataset: str
    job: str
    model: str
    endpoint: str
    audit: str
    run: str


def own_everything(api: Api, project: str, who: str, endpoint: str) -> Owned:
    r = api.upload(who, project)
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    r = api.submit(who, dataset)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    api.succeed(job)
    r = api.call("admin", "POST", f"/v1/jobs/{job}/promote", json={"endpoint": endpoint})
    assert r.status_code == 200, r.text
    model = r.json()["model_id"]
    r = api.call(
        who,
        "POST",
        "/v1/audits",
        json={
            "dataset_id": dataset,
            "label_column": "y",
            "prediction_column": "pred",
            "sensitive_features": ["sex"],
        },
    )
    assert r.status_code == 201, r.text
    audit = r.json()["id"]
    # A scoring run needs a readable bundle to be requested through the API; its row is what
    # the routes read.
    run = new_id("scr")
    with api.db.session() as s:
        s.add(
            ScoringRun(
                id=run,
                model_id=model,
                dataset_id=dataset,
                dataset_sha256="0" * 64,
                status="queued",
                request={},
                rows_total=1,
                rows_done=0,
            )
        )
    return Owned(dataset, job, model, endpoint, audit, run)


@pytest.fixture
def two(api: Api) -> tuple[Owned, Owned]:
    """Projects alpha and beta, each with a member and an approver and one of everything."""
    for p in ("alpha", "beta"):
        api.project(p)
        api.user(f"{p}-member", "member", [p])
        api.user(f"{p}-approver", "approver", [p])
    return (
        own_everything(api, "alpha", "alpha-member", "alpha-ep"),
        own_everything(api, "beta", "beta-member", "beta-ep"),
    )


# The resource each path parameter names, and where to find its id.
PARAMS = {
    "job_id": "job",
    "dataset_id": "dataset",
    "model_id": "model",
    "name": "endpoint",
    "audit_id": "audit",
    "run_id": "run",
}
NOT_SCOPED = ("/v1/internal/", "/v1/projects", "/v1/users", "/v1/tokens")


def routes_with_ids(api: Api) -> list[tuple[str, str, str]]:
    """Every route of the public API (its OpenAPI schema) with an id in its path."""
    found = []
    for path, operations in api.c.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        if not path.startswith("/v1/") or path.startswith(NOT_SCOPED):
            continue
        params = re.findall(r"{(\w+)}", path)
        if not params:
            continue
        assert len(params) == 1 and params[0] in PARAMS, f"{path}: add it to PARAMS"
        for method in operations:
            found.append((method.upper(), path, params[0]))
    return found


def test_every_route_with_an_id_answers_404_for_another_projects_resource(
    api: Api, two: tuple[Owned, Owned]
) -> None:
    alpha, beta = two
    walked = routes_with_ids(api)
    assert len(walked) >= 24 and {p for _, _, p in walked} == set(PARAMS)
    for method, template, param in walked:
        kind = PARAMS[param]
        path = template.replace("{" + param + "}", getattr(beta, kind))
        # An approver of alpha: high enough for every route, so only the project stops it.
        r = api.call("alpha-approver", method, path, json={})
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["error"] == "not_found", (method, path, r.text)
        # The same text as an id that was never made: nothing tells the two apart.
        never = template.replace("{" + param + "}", "nothing-here")
        r_never = api.call("alpha-approver", method, never, json={})
        assert r_never.status_code == 404
        assert r.json()["detail"].replace(getattr(beta, kind), "X") == r_never.json()[
            "detail"
        ].replace("nothing-here", "X"), (method, path)
        # Beta's own approver gets past the check (whatever the route then says).
        r = api.call("beta-approver", method, path, json={})
        assert r.status_code != 404, (method, path, r.text)
    # And alpha's resources are still alpha's.
    r = api.call("alpha-member", "GET", f"/v1/jobs/{alpha.job}")
    assert r.status_code == 200 and r.json()["project_id"] != ""


LISTS = {
    "/v1/jobs": "job",
    "/v1/datasets": "dataset",
    "/v1/models": "model",
    "/v1/audits": "audit",
    "/v1/scoring": "run",
}


def _listed(api: Api, who: str, path: str) -> set[str]:
    r = api.call(who, "GET", path)
    assert r.status_code == 200, r.text
    return {i.get("id") or i.get("name") for i in r.json()["items"]}


def test_lists_show_only_the_callers_projects(api: Api, two: tuple[Owned, Owned]) -> None:
    alpha, beta = two
    for path, kind in {**LISTS, "/v1/endpoints": "endpoint"}.items():
        mine = _listed(api, "alpha-member", path)
        assert getattr(alpha, kind) in mine and getattr(beta, kind) not in mine, path
        everyone = _listed(api, "admin", path)
        assert {getattr(alpha, kind), getattr(beta, kind)} <= everyone, path
    for path in ("/v1/jobs", "/v1/datasets", "/v1/audits", "/v1/scoring"):
        assert api.call("alpha-member", "GET", path).json()["total"] == len(
            _listed(api, "alpha-member", path)
        )
    # Built-in datasets are everyone's.
    assert ADULT in _listed(api, "alpha-member", "/v1/datasets")
    assert ADULT in _listed(api, "beta-member", "/v1/datasets")
    r = api.call("alpha-member", "GET", "/v1/projects")
    assert [p["name"] for p in r.json()["items"]] == ["alpha"]
    assert api.call("alpha-member", "GET", "/v1/projects/beta").status_code == 404
    assert api.call("alpha-member", "GET", "/v1/me").json()["projects"] == ["alpha"]


def test_new_things_go_into_a_project_the_caller_is_in(api: Api, two: tuple[Owned, Owned]) -> None:
    alpha, beta = two
    # Not a member of beta: as if beta did not exist.
    r = api.upload("alpha-member", "beta")
    assert r.status_code == 404 and r.json()["fields"][0]["loc"] == ["project"], r.text
    r = api.upload("alpha-member", "nosuch")
    assert r.status_code == 404 and r.json()["fields"][0]["loc"] == ["project"]
    # Another project's dataset cannot be trained on, nor audited.
    r = api.submit("alpha-member", beta.dataset)
    assert r.status_code == 404 and r.json()["fields"][0]["loc"] == ["dataset", "id"], r.text
    # (A parent model in a body is a 422, as for a model id never made, with the same text.)
    r = api.submit("alpha-member", alpha.dataset, model={"init_from": beta.model})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["model", "init_from"]
    r_never = api.submit("alpha-member", alpha.dataset, model={"init_from": "mdl_never"})
    assert r.json()["fields"][0]["msg"].replace(beta.model, "X") == r_never.json()["fields"][0][
        "msg"
    ].replace("mdl_never", "X")
    r = api.call(
        "alpha-member",
        "POST",
        "/v1/audits",
        json={
            "dataset_id": beta.dataset,
            "label_column": "y",
            "prediction_column": "pred",
            "sensitive_features": ["sex"],
        },
    )
    assert r.status_code == 404 and r.json()["fields"][0]["loc"] == ["dataset_id"]
    # A job on a built-in dataset goes into the caller's only project.
    r = api.call(
        "alpha-member",
        "POST",
        "/v1/jobs",
        json={"name": "b", "dataset": {"id": ADULT, "target": "income"}},
    )
    assert r.status_code == 202, r.text
    with_builtin = api.call("alpha-member", "GET", f"/v1/jobs/{r.json()['id']}").json()
    alpha_id = api.call("alpha-member", "GET", f"/v1/jobs/{alpha.job}").json()["project_id"]
    assert with_builtin["project_id"] == alpha_id
    # A job's project must be its dataset's, even for someone who sees both.
    api.user("both", "approver", ["alpha", "beta"])
    r = api.submit("both", alpha.dataset, project="beta")
    assert r.status_code == 404 and r.json()["fields"][0]["loc"] == ["dataset", "id"]
    # In two projects, a built-in dataset's job must say which.
    r = api.call(
        "both", "POST", "/v1/jobs", json={"name": "b", "dataset": {"id": ADULT, "target": "income"}}
    )
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["project"], r.text
    r = api.upload("both", None)
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["project"]
    # An endpoint name another project serves under is taken (names are Serve's routes).
    r = api.call("both", "POST", f"/v1/jobs/{alpha.job}/promote", json={"endpoint": "beta-ep"})
    assert r.status_code == 409 and r.json()["fields"][0]["loc"] == ["endpoint"], r.text
    assert _listed(api, "admin", "/v1/endpoints") == {"alpha-ep", "beta-ep"}
    assert api.call("admin", "GET", "/v1/endpoints/beta-ep").json()["model_id"] == beta.model


def test_membership_changes_what_a_user_sees_at_once(api: Api, two: tuple[Owned, Owned]) -> None:
    _, beta = two
    path = f"/v1/jobs/{beta.job}"
    assert api.call("alpha-member", "GET", path).status_code == 404
    r = api.call("admin", "POST", "/v1/projects/beta/members", json={"user": "alpha-member"})
    assert r.status_code == 201 and "alpha-member" in {m["name"] for m in r.json()["members"]}
    assert api.call("alpha-member", "GET", path).status_code == 200
    uid = api.user_ids["alpha-member"]
    r = api.call("admin", "DELETE", f"/v1/projects/beta/members/{uid}")
    assert r.status_code == 200
    assert api.call("alpha-member", "GET", path).status_code == 404
    assert api.call("admin", "DELETE", f"/v1/projects/beta/members/{uid}").status_code == 404
    r = api.call("admin", "POST", "/v1/projects/beta/members", json={"user": "nobody"})
    assert r.status_code == 404 and r.json()["fields"][0]["loc"] == ["user"]


def served_hashes(api: Api, endpoint: str) -> set[str]:
    """The token hashes the last pushed Serve config gives the endpoint's replicas."""
    (app,) = [
        a for a in api.deployer.configs[-1]["applications"] if a["route_prefix"] == f"/{endpoint}"
    ]
    return set(app["deployments"][0]["user_config"]["token_hashes"])


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_serving_endpoints_take_only_their_projects_tokens(
    api: Api, two: tuple[Owned, Owned]
) -> None:
    alpha, beta = two
    admin, a_member, b_member = (
        sha(ADMIN),
        sha(api.tokens["alpha-member"]),
        sha(api.tokens["beta-member"]),
    )
    assert admin in served_hashes(api, alpha.endpoint) and admin in served_hashes(
        api, beta.endpoint
    )
    assert a_member in served_hashes(api, alpha.endpoint)
    assert a_member not in served_hashes(api, beta.endpoint)
    assert b_member not in served_hashes(api, alpha.endpoint)

    # Membership and role changes push the lists again, right after the answer.
    pushes = len(api.deployer.configs)
    r = api.call("admin", "POST", "/v1/projects/alpha/members", json={"user": "beta-member"})
    assert r.status_code == 201, r.text
    assert len(api.deployer.configs) == pushes + 1
    assert b_member in served_hashes(api, alpha.endpoint)
    uid = api.user_ids["beta-member"]
    r = api.call("admin", "DELETE", f"/v1/projects/alpha/members/{uid}")
    assert r.status_code == 200, r.text
    assert b_member not in served_hashes(api, alpha.endpoint)
    r = api.call("admin", "PATCH", f"/v1/users/{uid}", json={"role": "admin"})
    assert r.status_code == 200, r.text
    assert b_member in served_hashes(api, alpha.endpoint)
    r = api.call("admin", "PATCH", f"/v1/users/{uid}", json={"role": "approver"})
    assert r.status_code == 200, r.text
    assert b_member not in served_hashes(api, alpha.endpoint)
    assert b_member in served_hashes(api, beta.endpoint)


def test_a_starting_api_pushes_the_serving_lists_again(api: Api, two: tuple[Owned, Owned]) -> None:
    """Ray keeps the Serve config when the API restarts: the new API's first push replaces
    lists an older one left (here: the alpha member's token made callable everywhere)."""
    alpha, beta = two
    stale = api.deployer.configs[-1]
    for app in stale["applications"]:
        for d in app["deployments"]:
            d["user_config"]["token_hashes"].append(sha(api.tokens["alpha-member"]))
    assert sha(api.tokens["alpha-member"]) in served_hashes(api, beta.endpoint)
    sync = ExpirySync(api.db, api.deployer)
    sync.start()
    try:
        deadline = time.monotonic() + 10
        while api.deployer.configs[-1] is stale:
            assert time.monotonic() < deadline, "no push after start"
            time.sleep(0.05)
    finally:
        sync.stop()
    assert sha(api.tokens["alpha-member"]) not in served_hashes(api, beta.endpoint)
    assert sha(api.tokens["alpha-member"]) in served_hashes(api, alpha.endpoint)


def test_projects_are_admin_business(api: Api) -> None:
    api.user("m", "member", ["default"])
    assert api.call("m", "POST", "/v1/projects", json={"name": "x"}).status_code == 403
    assert api.call("m", "PATCH", "/v1/projects/default", json={"max_cpus": 1}).status_code == 403
    api.project("x")
    r = api.call("admin", "POST", "/v1/projects", json={"name": "x"})
    assert r.status_code == 409 and r.json()["fields"][0]["loc"] == ["name"]
    for bad in ({"name": "Bad Name"}, {"name": "y", "max_cpus": -1}, {"name": "y", "cpu": 1}):
        r = api.call("admin", "POST", "/v1/projects", json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = api.call("admin", "POST", "/v1/users", json={"name": "u", "projects": ["default", "nope"]})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["projects", 1], r.text
    assert "u" not in {u["name"] for u in api.call("admin", "GET", "/v1/users").json()["items"]}
    # A user made without projects works in "default", as everyone did before projects.
    r = api.call("admin", "POST", "/v1/users", json={"name": "v"})
    assert r.status_code == 201 and r.json()["projects"] == ["default"]


# --- quotas -----------------------------------------------------------------------------------


def test_quotas_refuse_what_would_pass_them_and_say_why(api: Api) -> None:
    api.project("q", max_concurrent_jobs=1, max_trials_per_job=4, max_cpus=2)
    api.user("qm", "member", ["q"])
    api.user("qa", "approver", ["q"])
    spec = {"name": "j", "project": "q", "dataset": {"id": ADULT, "target": "income"}}

    def submit(**extra: Any) -> Any:
        return api.call("qm", "POST", "/v1/jobs", json={**spec, **extra})

    r = submit(search={"num_trials": 5})
    assert r.status_code == 429 and r.json()["error"] == "quota_exceeded"
    assert r.json()["quota"] == {
        "name": "max_trials_per_job",
        "limit": 4,
        "in_use": 0,
        "requested": 5,
    }
    grid = {"algorithm": "grid", "space": {"training.epochs": {"grid": [1, 2, 3, 4, 5]}}}
    assert submit(search=grid).json()["quota"]["requested"] == 5
    r = submit(search={"max_concurrent": 3})
    assert r.status_code == 429 and r.json()["quota"]["name"] == "max_cpus", r.text
    first = submit()
    assert first.status_code == 202, first.text
    r = submit()
    assert r.status_code == 429 and r.json()["quota"] == {
        "name": "max_concurrent_jobs",
        "limit": 1,
        "in_use": 1,
        "requested": 1,
    }
    assert "in use" in r.json()["detail"]
    usage = api.call("qm", "GET", "/v1/projects/q").json()["usage"]
    assert usage["concurrent_jobs"] == 1 and usage["cpus"] == 2.0
    # Refused submissions left nothing behind; a cancelled job frees its place.
    assert api.call("qm", "GET", "/v1/jobs").json()["total"] == 1
    assert api.call("qm", "POST", f"/v1/jobs/{first.json()['id']}/cancel").status_code == 200
    assert submit().status_code == 202
    # Raising the limit takes effect for the next submission.
    r = api.call("admin", "PATCH", "/v1/projects/q", json={"max_concurrent_jobs": None})
    assert r.status_code == 200 and r.json()["quotas"]["max_concurrent_jobs"] is None
    assert r.json()["quotas"]["max_cpus"] == 2  # untouched: not in the request
    assert api.call("admin", "PATCH", "/v1/projects/q", json={"max_cpus": None}).status_code == 200
    assert submit().status_code == 202


def test_storage_quota_refuses_an_upload_and_keeps_nothing(api: Api) -> None:
    api.project("s", max_storage_bytes=2000)
    api.user("sm", "member", ["s"])
    first = api.upload("sm", "s")
    assert first.status_code == 201, first.text
    size = first.json()["size_bytes"]
    assert size <= 2000 < 2 * size, size  # the test's premise: one fits, two do not
    folder = api.settings.resolved_artifact_root / "datasets"
    files = set(folder.iterdir())
    r = api.upload("sm", "s")
    assert r.status_code == 429 and r.json()["quota"]["name"] == "max_storage_bytes", r.text
    assert r.json()["quota"]["in_use"] == size
    assert set(folder.iterdir()) == files
    assert api.call("sm", "GET", "/v1/datasets").json()["total"] == 1 + len(
        [d for d in api.call("sm", "GET", "/v1/datasets").json()["items"] if d["builtin"]]
    )


def test_racing_submissions_do_not_pass_a_quota_together(api: Api) -> None:
    api.project("race", max_concurrent_jobs=3)
    api.user("rm", "member", ["race"])
    spec = {"name": "j", "project": "race", "dataset": {"id": ADULT, "target": "income"}}
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: api.call("rm", "POST", "/v1/jobs", json=spec).status_code, range(12))
        )
    assert sorted(codes) == [202] * 3 + [429] * 9, codes
    assert api.call("rm", "GET", "/v1/jobs").json()["total"] == 3


def test_a_member_cancels_only_their_own_jobs(api: Api) -> None:
    api.project("own")
    for name, role in (("m1", "member"), ("m2", "member"), ("ap", "approver")):
        api.user(name, role, ["own"])
    spec = {"name": "j", "project": "own", "dataset": {"id": ADULT, "target": "income"}}
    jobs = [api.call("m1", "POST", "/v1/jobs", json=spec).json()["id"] for _ in range(2)]
    r = api.call("m2", "POST", f"/v1/jobs/{jobs[0]}/cancel")
    assert r.status_code == 403 and "only what they submitted" in r.json()["detail"]
    assert api.call("m1", "POST", f"/v1/jobs/{jobs[0]}/cancel").status_code == 200
    assert api.call("ap", "POST", f"/v1/jobs/{jobs[1]}/cancel").status_code == 200


# --- a property: no cross-project read or write ever succeeds -----------------------------------

_names = itertools.count()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    memberships=st.lists(st.sets(st.integers(0, 2), max_size=3), min_size=2, max_size=4),
    roles=st.lists(st.sampled_from(["viewer", "member", "approver"]), min_size=4, max_size=4),
    owners=st.lists(st.integers(0, 2), min_size=1, max_size=4),
)
def test_no_cross_project_access_for_random_users_and_projects(
    api: Api, memberships: list[set[int]], roles: list[str], owners: list[int]
) -> None:
    n = next(_names)
    projects = [f"p{n}-{i}" for i in range(3)]
    for p in projects:
        api.project(p)
    users = []
    for i, member_of in enumerate(memberships):
        name = f"u{n}-{i}"
        api.user(name, roles[i], [projects[j] for j in sorted(member_of)])
        users.append((name, member_of))
    # Resources: a dataset and a job in each owner's project, made by an admin.
    made: list[tuple[int, str, str]] = []
    for j in owners:
        r = api.upload("admin", projects[j])
        assert r.status_code == 201, r.text
        ds = r.json()["id"]
        r = api.submit("admin", ds)
        assert r.status_code == 202, r.text
        made.append((j, ds, r.json()["id"]))
    for name, member_of in users:
        seen_jobs = _listed(api, name, "/v1/jobs")
        seen_data = _listed(api, name, "/v1/datasets")
        for j, ds, job in made:
            inside = j in member_of
            assert (job in seen_jobs) == inside and (ds in seen_data) == inside
            for path in (f"/v1/jobs/{job}", f"/v1/datasets/{ds}", f"/v1/jobs/{job}/trials"):
                assert api.call(name, "GET", path).status_code == (200 if inside else 404)
            # Writes: never past the project line (a viewer is stopped by its role first).
            r = api.call(name, "POST", f"/v1/jobs/{job}/cancel")
            if roles[users.index((name, member_of))] == "viewer":
                assert r.status_code == 403
            elif not inside:
                assert r.status_code == 404
            r = api.submit(name, ds)
            if r.status_code == 202:
                assert inside, (name, ds)
                api.call("admin", "POST", f"/v1/jobs/{r.json()['id']}/cancel")
            else:
                assert r.status_code in (403, 404), r.text
