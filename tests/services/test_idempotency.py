"""Idempotent job submission (Idempotency-Key) on SQLite and PostgreSQL, concurrency included.

No Ray here: the reconciler is off, so a job row is all a submission makes; it launches
committed rows only, so one row means one Ray job (tests/e2e launch them for real).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.api.app import create_app
from services.config import Settings
from services.core.datasets import builtin_id
from services.store.db import Database
from services.store.models import IdempotencyKey, Job
from services.store.repositories import JobRepository

ADMIN = "test-admin-token"
SPEC: dict[str, Any] = {
    "name": "j",
    "dataset": {"id": builtin_id("adult"), "target": "income"},
    "audit": {"sensitive_features": ["sex"]},
}


class Api:
    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.c = client
        self.db = Database(settings.resolved_database_url)

    def submit(self, spec: Any, key: str | None, token: str = ADMIN) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.c.post("/v1/jobs", json=spec, headers=headers)

    def jobs(self) -> int:
        with self.db.session() as s:
            return JobRepository(s).count(None)

    def token_for(self, name: str) -> str:
        h = {"Authorization": f"Bearer {ADMIN}"}
        user = self.c.post("/v1/users", json={"name": name, "role": "member"}, headers=h)
        r = self.c.post("/v1/tokens", json={"name": name, "user_id": user.json()["id"]}, headers=h)
        return str(r.json()["token"])


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        bootstrap_token=ADMIN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens there
        rate_limit_per_minute=0,
    )
    with TestClient(create_app(settings, reconcile=False)) as client:
        a = Api(client, settings)
        yield a
        a.db.engine.dispose()


def test_same_key_and_body_give_the_same_job(api: Api) -> None:
    first = api.submit(SPEC, "k-1")
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    again = api.submit(dict(reversed(list(SPEC.items()))), "k-1")  # key order does not matter
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() == {"id": first.json()["id"], "status": "queued"}
    assert api.jobs() == 1
    # Without a key, or with another, a submission is a new job.
    assert api.submit(SPEC, None).json()["id"] != first.json()["id"]
    assert api.submit(SPEC, "k-2").json()["id"] != first.json()["id"]
    assert api.jobs() == 3
    # A replay reports the job as it is now.
    api.c.post(
        f"/v1/jobs/{first.json()['id']}/cancel", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert api.submit(SPEC, "k-1").json()["status"] == "cancelled"


def test_same_key_with_another_body_is_422_naming_the_header(api: Api) -> None:
    job_id = api.submit(SPEC, "k").json()["id"]
    r = api.submit({**SPEC, "name": "other"}, "k")
    assert r.status_code == 422
    assert r.json()["fields"] == [
        {
            "loc": ["header", "Idempotency-Key"],
            "msg": f"this key was used with another request body (for job {job_id}); use a "
            "new key for a new job",
        }
    ]
    assert api.jobs() == 1


def test_keys_are_per_user_and_a_refused_spec_uses_no_key(api: Api) -> None:
    other = api.token_for("other")
    mine, theirs = api.submit(SPEC, "shared"), api.submit(SPEC, "shared", token=other)
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    # An invalid spec creates nothing and records no key: the corrected retry goes through.
    bad = api.submit({**SPEC, "dataset": {"id": "ds_nope", "target": "income"}}, "fix-me")
    assert bad.status_code in (404, 422)
    assert api.submit(SPEC, "fix-me").status_code == 202
    for key in ("", "x" * 256, "tab\there"):
        r = api.submit(SPEC, key)
        assert r.status_code == 422, key
        assert r.json()["fields"][0]["loc"] == ["header", "Idempotency-Key"]
    with api.db.session() as s:
        assert s.query(IdempotencyKey).count() == 3


def test_concurrent_identical_submissions_create_one_job(api: Api) -> None:
    """50 requests at once with one key: exactly one job; every answer names it. The losers
    of the race fail on the (user, key) unique constraint and roll their own job back."""
    n = 50
    with ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(lambda _: api.submit(SPEC, "race"), range(n)))
    assert all(r.status_code in (200, 202) for r in answers), {r.text for r in answers}
    codes = Counter(r.status_code for r in answers)
    assert codes[202] == 1 and codes[200] == n - 1
    assert len({r.json()["id"] for r in answers}) == 1
    with api.db.session() as s:
        assert s.query(Job).count() == 1
        assert s.query(IdempotencyKey).count() == 1


def test_a_key_expires_and_then_makes_a_new_job(api: Api) -> None:
    """After idempotency_key_hours a key is free again, even with another body; the user's
    expired rows go, the others stay."""
    first = api.submit(SPEC, "old").json()["id"]
    kept = api.submit(SPEC, "recent").json()["id"]
    with api.db.session() as s:
        row = s.query(IdempotencyKey).filter_by(key="old").one()
        row.created_at = datetime.now(UTC) - timedelta(hours=24, minutes=1)
    again = api.submit({**SPEC, "name": "other"}, "old")
    assert again.status_code == 202, again.text
    assert again.json()["id"] != first
    assert api.submit({**SPEC, "name": "other"}, "old").json()["id"] == again.json()["id"]
    assert api.submit(SPEC, "recent").json()["id"] == kept
    with api.db.session() as s:
        rows = {(k.key, k.job_id) for k in s.query(IdempotencyKey)}
    assert rows == {("old", again.json()["id"]), ("recent", kept)}


def test_a_key_lifetime_past_ten_years_is_refused_at_start(tmp_path: Path) -> None:
    """'Never expire' spelled as a huge number would overflow the cutoff date at every keyed
    submission (a 500); the setting is refused when the API starts instead."""
    with pytest.raises(ValidationError, match="idempotency_key_hours"):
        Settings(data_dir=tmp_path, idempotency_key_hours=2e7)
    assert Settings(data_dir=tmp_path, idempotency_key_hours=24 * 365 * 10).idempotency_key_hours
