"""Identity on a real stack: concurrent idempotent submissions make one Ray job; a revoked
token, or a disabled user's, stops working at a served endpoint too, and an endpoint takes
only its project's members' tokens."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from jobs.datasets import BUILTIN

from .conftest import Stack
from .test_promotion import tiny_spec

pytestmark = pytest.mark.e2e


def _predict(url: str, token: str, rows: list[dict[str, Any]]) -> int:
    r = httpx.post(
        url, json={"instances": rows}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    return r.status_code


def _until(url: str, token: str, rows: list[dict[str, Any]], code: int, limit_s: float) -> float:
    started = time.monotonic()
    while (got := _predict(url, token, rows)) != code:
        assert time.monotonic() - started < limit_s, f"still {got}, not {code}"
        time.sleep(0.2)
    return time.monotonic() - started


def test_idempotent_submissions_launch_one_ray_job_and_revocation_reaches_serving(
    stack: Stack,
) -> None:
    c = stack.client
    spec = tiny_spec("idem", seed=77)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: c.submit_job(spec, idempotency_key="e2e-1"), range(10)))
    job_id = answers[0]["id"]
    assert {a["id"] for a in answers} == {job_id}
    assert c.wait(job_id, timeout=600)["status"] == "succeeded", c.job(job_id)["error"]
    ray = {"Authorization": f"Bearer {stack.ray_token}"}
    ray_jobs = httpx.get(f"{stack.dashboard_url}/api/jobs/", headers=ray, timeout=30).json()
    launched = [j for j in ray_jobs if (j.get("submission_id") or "").startswith(job_id)]
    assert len(launched) == 1, launched
    assert sum(1 for j in c.jobs() if j["name"] == "idem") == 1

    served = c.promote(job_id, "identity")
    rows = pq.read_table(BUILTIN["adult"].path).slice(0, 2).drop(["income"]).to_pylist()
    user = c.create_user("e2e-viewer", "viewer")
    first = c.create_token("serving", user["id"])
    second = c.create_token("serving-2", user["id"])
    for t in (first, second):  # new tokens reach the replicas with a config push
        took = _until(served["url"], t["token"], rows, 200, limit_s=20)
        print(f"new token taken by the replicas after {took:.2f}s")
    c.revoke_token(first["id"])
    took = _until(served["url"], first["token"], rows, 401, limit_s=20)
    print(f"revoked token refused by the replicas after {took:.2f}s")
    assert _predict(served["url"], second["token"], rows) == 200
    c.update_user(user["id"], disabled=True)
    took = _until(served["url"], second["token"], rows, 401, limit_s=20)
    print(f"disabled user's token refused by the replicas after {took:.2f}s")
    assert _predict(served["url"], stack.token, rows) == 200

    # An endpoint takes the tokens of its project's members (and admins'), no one else's.
    c.create_project("e2e-elsewhere")
    outsider = c.create_user("e2e-outsider", "viewer", ["e2e-elsewhere"])
    theirs = c.create_token("outsider", outsider["id"])
    time.sleep(3)  # new tokens reach replicas in well under a second (above)
    assert _predict(served["url"], theirs["token"], rows) == 401
    c.add_member("default", "e2e-outsider")
    took = _until(served["url"], theirs["token"], rows, 200, limit_s=20)
    print(f"a new member's token taken by the replicas after {took:.2f}s")
    c.remove_member("default", outsider["id"])
    took = _until(served["url"], theirs["token"], rows, 401, limit_s=20)
    print(f"a removed member's token refused by the replicas after {took:.2f}s")
