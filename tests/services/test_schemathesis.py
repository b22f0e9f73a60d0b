"""Schemathesis against the API's own OpenAPI schema: every operation, every check.

Each operation is called with the cases Schemathesis derives from the schema (its examples,
its coverage phase: boundary values, wrong types, missing and extra parameters, methods the
path does not allow, and random fuzzing), with positive and negative data, once with the
admin's token and once without one. Every response must pass all of Schemathesis's checks:
no 5xx, a status code the operation declares, the declared content type, a body that
conforms to the declared schema, negative data rejected and positive data accepted.

Generated ids name nothing, so ``test_seeded`` calls each id-taking operation again with the
id of a resource made first (a dataset, an audit, a queued job, a user, a token), under the
same checks. The API runs in process on SQLite in a temporary directory, with no Ray cluster
reachable. ``CRUCIBLE_SCHEMATHESIS_EXAMPLES`` raises the number of fuzzed cases per operation
(default 10: the file takes about a minute on 2 cores); the cases are the same on every run
unless ``CRUCIBLE_SCHEMATHESIS_SEED`` picks others. One operation alone:
``-k "test_with_token and POST and datasets"`` (under pytest 9.2 every item of a test shares
one node id; its name, shown on failure, carries the operation).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from services.api.app import create_app
from services.config import Settings

TOKEN = "schemathesis-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = int(os.environ.get("CRUCIBLE_SCHEMATHESIS_EXAMPLES", "10"))
SEED = os.environ.get("CRUCIBLE_SCHEMATHESIS_SEED")  # another draw of cases than CI's


class Started:
    """The app as Schemathesis reaches it: requests pass through; lifespan events do not.

    Schemathesis starts an app's lifespan on its first request and ends it after every test,
    and this app's lifespan runs once (its end closes the Ray client and the database
    engine). So the fixture's TestClient runs it, once for the module, and Schemathesis's
    lifespan scope is answered as an app without lifespan support answers it.
    """

    def __init__(self, app: FastAPI, ids: dict[str, str]) -> None:
        self.app = app
        self.ids = ids  # of the resources seeded: dataset_id, job_id, ...

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    settings = Settings(
        data_dir=tmp,
        database_url=f"sqlite:///{tmp / 'test.db'}",
        bootstrap_token=TOKEN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens there
        rate_limit_per_minute=0,  # thousands of requests a minute from one token
    )
    application = create_app(settings, reconcile=False)
    with TestClient(application) as client:
        yield Started(application, _seed(client))


def _seed(client: TestClient) -> dict[str, str]:
    """One of each resource the API can make without Ray: a dataset, an audit of it, a job
    (queued: Ray is not there to launch it), a user and a token."""
    n = 80
    table = pa.table(
        {
            "x": [float(i) for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "pred": [(i // 2) % 2 for i in range(n)],
            "g": ["a", "b"] * (n // 2),
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)

    def made(r: Any) -> str:
        assert r.status_code in (201, 202), r.text
        return str(r.json()["id"])

    dataset_id = made(
        client.post(
            "/v1/datasets",
            headers=AUTH,
            files={"file": ("tiny.parquet", buf.getvalue())},
            data={"name": "tiny", "target": "label"},
        )
    )
    audit = {"sensitive_features": ["g"]}
    return {
        "dataset_id": dataset_id,
        "audit_id": made(
            client.post(
                "/v1/audits",
                headers=AUTH,
                json={
                    "dataset_id": dataset_id,
                    "label_column": "label",
                    "prediction_column": "pred",
                    **audit,
                },
            )
        ),
        "job_id": made(
            client.post(
                "/v1/jobs",
                headers=AUTH,
                json={
                    "name": "j",
                    "dataset": {"id": dataset_id, "target": "label"},
                    "audit": audit,
                },
            )
        ),
        "user_id": made(client.post("/v1/users", headers=AUTH, json={"name": "someone"})),
        "token_id": made(client.post("/v1/tokens", headers=AUTH, json={"name": "spare"})),
    }


def _openapi() -> dict[str, Any]:
    """The schema as the app serves it at /openapi.json (built without starting the app)."""
    app = create_app(Settings(database_url="sqlite://", ray_dashboard_url="http://127.0.0.1:9"))
    try:
        return app.openapi()
    finally:
        app.state.services.gateway.close()
        app.state.services.db.engine.dispose()


CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "mode": "all",  # positive and negative data
            "max-examples": MAX_EXAMPLES,
            "deterministic": SEED is None,
            "database": "none",  # no .hypothesis directory in the tree
        },
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}},
        "checks": {
            "enabled": True,
            # Schema-valid data may still name what does not exist (a dataset id, a column, a
            # project): the API answers 422 naming the field, which no schema can rule out.
            # Every other check keeps its defaults.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]
            },
        },
        **({"seed": int(SEED)} if SEED else {}),
    }
)
# Loaded at import, so each operation is a test of its own (pytest 9 no longer lets
# schemathesis.pytest.from_fixture rename its items); the requests go to the fixture's app.
schema = schemathesis.openapi.from_dict(_openapi(), config=CONFIG)


@schema.parametrize()
def test_with_token(case: schemathesis.Case, app: Started) -> None:
    case.call_and_validate(app=app, headers=AUTH)


@schema.parametrize()
def test_without_token(case: schemathesis.Case, app: Started) -> None:
    case.call_and_validate(app=app)


# Each id-taking operation with a seeded resource's id, in this order (the job is cancelled,
# then found cancelled), every check on the answer: real bodies against their schemas, and the
# statuses of a resource's states (a queued job has no evaluation yet: 409).
SEEDED: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/v1/datasets/{dataset_id}", {}, 200),
    ("GET", "/v1/audits/{audit_id}", {}, 200),
    ("GET", "/v1/audits/{audit_id}.html", {}, 200),
    ("GET", "/v1/jobs/{job_id}", {}, 200),
    ("GET", "/v1/jobs/{job_id}/trials", {}, 200),
    ("GET", "/v1/jobs/{job_id}/logs", {}, 200),
    ("GET", "/v1/jobs/{job_id}/evaluation", {}, 409),
    ("GET", "/v1/jobs/{job_id}/audit", {}, 409),
    ("GET", "/v1/jobs/{job_id}/audit.html", {}, 409),
    ("POST", "/v1/jobs/{job_id}/promote", {"body": {"endpoint": "e"}}, 409),
    ("POST", "/v1/jobs/{job_id}/cancel", {}, 200),
    ("POST", "/v1/jobs/{job_id}/cancel", {}, 409),
    ("POST", "/v1/jobs/{job_id}/resume", {}, 409),
    ("PATCH", "/v1/users/{user_id}", {"body": {"role": "member"}}, 200),
    ("DELETE", "/v1/tokens/{token_id}", {}, 200),
]


@pytest.mark.parametrize(("method", "path", "data", "status"), SEEDED)
def test_seeded(method: str, path: str, data: dict[str, Any], status: int, app: Started) -> None:
    ids = {name: app.ids[name] for name in re.findall(r"{(\w+)}", path)}
    case = schema[path][method].Case(path_parameters=ids, **data)
    response = case.call_and_validate(app=app, headers=AUTH)
    assert response.status_code == status, response.text
