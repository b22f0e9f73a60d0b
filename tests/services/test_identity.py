"""Users, tokens, roles, the audit log and request limits, through the HTTP API on SQLite and
PostgreSQL (no Ray: jobs are queued, not launched)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from jobs.datasets import BUILTIN
from services.api.app import create_app
from services.config import Settings
from services.core import rollout
from services.core.auth import hash_token
from services.core.datasets import builtin_id
from services.core.projects import DEFAULT_PROJECT_ID
from services.store.db import Database
from services.store.repositories import TokenRepository

ADMIN = "test-admin-token"
ADULT = builtin_id("adult")
SPEC: dict[str, Any] = {
    "name": "j",
    "dataset": {"id": ADULT, "target": "income"},
    "audit": {"sensitive_features": ["sex"]},
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Api:
    def __init__(self, app: FastAPI, client: TestClient, settings: Settings) -> None:
        self.app, self.c, self.settings = app, client, settings
        self.db = Database(settings.resolved_database_url)

    def as_(self, token: str, method: str, path: str, **kw: Any) -> Any:
        return self.c.request(
            method, path, headers={**bearer(token), **kw.pop("headers", {})}, **kw
        )

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        return self.as_(ADMIN, method, path, **kw)

    def user(self, name: str, role: str) -> tuple[str, str]:
        """A new user with one token: (user id, secret)."""
        r = self.admin("POST", "/v1/users", json={"name": name, "role": role})
        assert r.status_code == 201, r.text
        user_id = r.json()["id"]
        r = self.admin("POST", "/v1/tokens", json={"name": f"{name}-cli", "user_id": user_id})
        assert r.status_code == 201, r.text
        return user_id, r.json()["token"]

    def audit_rows(self, **params: Any) -> list[dict[str, Any]]:
        r = self.admin("GET", "/v1/audit-log", params=params)
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


ApiFactory = Callable[..., Api]


@pytest.fixture
def make_api(database_url: str, tmp_path: Path) -> Iterator[ApiFactory]:
    clients: list[TestClient] = []
    apis: list[Api] = []

    def make(**settings: Any) -> Api:
        s = Settings(
            data_dir=tmp_path,
            database_url=database_url,
            bootstrap_token=ADMIN,
            ray_dashboard_url="http://127.0.0.1:9",  # nothing listens there
            **settings,
        )
        app = create_app(s, reconcile=False)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        apis.append(Api(app, client, s))
        return apis[-1]

    yield make
    for c in clients:
        c.__exit__(None, None, None)
    for a in apis:
        a.db.engine.dispose()


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    return make_api()


def parquet(rows: int = 5) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": list(range(rows)), "y": [i % 2 for i in range(rows)]}), buf)
    return buf.getvalue()


# --- tokens -----------------------------------------------------------------------------------


def test_a_token_is_shown_once_and_stored_hashed(api: Api) -> None:
    user_id, secret = api.user("alice", "member")
    assert secret.startswith("cru_")
    # The secret works, and names its user.
    me = api.as_(secret, "GET", "/v1/me").json()
    assert (me["id"], me["name"], me["role"]) == (user_id, "alice", "member")
    assert me["token"]["name"] == "alice-cli" and "token" not in me["token"]
    # Listings never carry the secret or its hash: not the owner's, not the admin's.
    digest = hash_token(secret)
    for token in (secret, ADMIN):
        r = api.as_(token, "GET", "/v1/tokens")
        assert r.status_code == 200
        assert secret not in r.text and digest not in r.text
        assert all("token" not in t and "token_hash" not in t for t in r.json()["items"])
    own = api.as_(secret, "GET", "/v1/tokens").json()["items"]
    assert [t["name"] for t in own] == ["alice-cli"]  # only hers
    every = api.admin("GET", "/v1/tokens").json()["items"]
    assert {t["name"] for t in every} == {"bootstrap", "alice-cli"}
    with api.db.engine.connect() as conn:
        dump = str(conn.exec_driver_sql("SELECT * FROM tokens").fetchall())
    assert secret not in dump and digest in dump


def test_a_user_manages_only_their_own_tokens(api: Api) -> None:
    alice_id, alice = api.user("alice", "viewer")
    bob_id, bob = api.user("bob", "member")
    # A viewer may create and revoke their own tokens (POST and DELETE, yet no member needed).
    r = api.as_(alice, "POST", "/v1/tokens", json={"name": "second", "expires_in_days": 7})
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["user_id"] == alice_id and second["expires_at"] is not None
    # Not for someone else, and someone else's token is not there for them.
    r = api.as_(alice, "POST", "/v1/tokens", json={"name": "x", "user_id": bob_id})
    assert (r.status_code, r.json()["detail"]) == (
        403,
        "needs role admin to create a token for another user",
    )
    bobs = api.as_(bob, "GET", "/v1/tokens").json()["items"]
    assert api.as_(alice, "DELETE", f"/v1/tokens/{bobs[0]['id']}").status_code == 404
    assert api.as_(alice, "GET", "/v1/tokens", params={"user_id": bob_id}).status_code == 403
    assert api.as_(bob, "GET", "/v1/me").status_code == 200
    r = api.as_(alice, "DELETE", f"/v1/tokens/{second['id']}")
    assert (r.status_code, r.json()["status"]) == (200, "revoked")
    # An admin may revoke anyone's.
    assert api.admin("DELETE", f"/v1/tokens/{bobs[0]['id']}").json()["status"] == "revoked"
    assert api.as_(bob, "GET", "/v1/me").status_code == 401
    # Bad input names its field.
    r = api.as_(alice, "POST", "/v1/tokens", json={"name": "y", "expires_in_days": 0})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["expires_in_days"]
    r = api.admin("POST", "/v1/tokens", json={"name": "y", "user_id": "usr_nope"})
    assert r.status_code == 404 and r.json()["fields"][0]["loc"] == ["user_id"]


def test_revoked_expired_and_disabled_tokens_are_401(api: Api) -> None:
    _, revoked = api.user("rev", "member")
    _, expired = api.user("exp", "member")
    dis_id, disabled = api.user("dis", "member")
    _, fine = api.user("fine", "viewer")
    for token in (revoked, expired, disabled, fine):
        assert api.as_(token, "GET", "/v1/me").status_code == 200

    token_id = api.as_(revoked, "GET", "/v1/me").json()["token"]["id"]
    assert api.as_(revoked, "DELETE", f"/v1/tokens/{token_id}").status_code == 200
    with api.db.session() as s:
        row = TokenRepository(s).by_hash(hash_token(expired))
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    r = api.admin("PATCH", f"/v1/users/{dis_id}", json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled_at"] is not None

    for token, detail in (
        (revoked, "invalid or revoked token"),
        (expired, "the token expired"),
        (disabled, "the token's user is disabled"),
    ):
        r = api.as_(token, "GET", "/v1/jobs")
        assert (r.status_code, r.json()["detail"]) == (401, detail), token
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert api.as_(fine, "GET", "/v1/jobs").status_code == 200
    # Serving replicas get only the hashes of tokens that work.
    with api.db.session() as s:
        hashes = set(rollout.access(s).hashes(DEFAULT_PROJECT_ID))
    assert hashes == {hash_token(ADMIN), hash_token(fine)}
    listed = {t["name"]: t["status"] for t in api.admin("GET", "/v1/tokens").json()["items"]}
    assert listed["rev-cli"] == "revoked" and listed["exp-cli"] == "expired"
    # Enabled again, the user's tokens work again.
    api.admin("PATCH", f"/v1/users/{dis_id}", json={"disabled": False})
    assert api.as_(disabled, "GET", "/v1/me").status_code == 200


def test_users_are_admin_business_and_the_last_admin_stays(api: Api) -> None:
    _, member = api.user("mem", "member")
    r = api.as_(member, "POST", "/v1/users", json={"name": "eve", "role": "admin"})
    assert (r.status_code, r.json()) == (
        403,
        {"error": "forbidden", "detail": "needs role admin", "fields": []},
    )
    assert api.as_(member, "GET", "/v1/users").status_code == 403
    r = api.admin("POST", "/v1/users", json={"name": "mem", "role": "viewer"})
    assert r.status_code == 409 and r.json()["fields"][0]["loc"] == ["name"]
    r = api.admin("POST", "/v1/users", json={"name": "x", "role": "root"})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["role"]
    r = api.admin("POST", "/v1/users", json={"name": "bad name/"})
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["name"]
    users = {u["name"]: u for u in api.admin("GET", "/v1/users").json()["items"]}
    assert set(users) == {"bootstrap", "mem"} and users["bootstrap"]["role"] == "admin"
    boot = users["bootstrap"]["id"]
    for change in ({"disabled": True}, {"role": "member"}):
        r = api.admin("PATCH", f"/v1/users/{boot}", json=change)
        assert r.status_code == 409 and "last enabled admin" in r.json()["detail"]
    # A promoted member can then manage users; the bootstrap admin may step down.
    api.admin("PATCH", f"/v1/users/{users['mem']['id']}", json={"role": "admin"})
    assert api.as_(member, "GET", "/v1/users").status_code == 200
    assert api.as_(member, "PATCH", f"/v1/users/{boot}", json={"role": "viewer"}).status_code == 200
    assert api.admin("GET", "/v1/users").status_code == 403


# --- roles ------------------------------------------------------------------------------------


def test_each_role_on_representative_routes(api: Api) -> None:
    tokens = {role: api.user(role, role)[1] for role in ("viewer", "member", "approver")}
    tokens["admin"] = ADMIN
    order = ["viewer", "member", "approver", "admin"]
    job = api.admin("POST", "/v1/jobs", json=SPEC).json()["id"]

    def check(method: str, path: str, needs: str, **kw: Any) -> None:
        for role in order:
            r = api.as_(tokens[role], method, path, **kw)
            if order.index(role) < order.index(needs):
                assert r.status_code == 403, (role, method, path, r.text)
                assert r.json() == {
                    "error": "forbidden",
                    "detail": f"needs role {needs}",
                    "fields": [],
                }
            else:
                assert r.status_code != 403, (role, method, path, r.text)
                assert r.status_code < 500, (role, method, path, r.text)

    check("GET", "/v1/jobs", "viewer")
    check("GET", f"/v1/jobs/{job}", "viewer")
    check("GET", "/v1/models", "viewer")
    check("POST", "/v1/jobs", "member", json=SPEC)
    check("POST", "/v1/jobs/job_nope/cancel", "member")
    check(
        "POST",
        "/v1/datasets",
        "member",
        files={"file": ("d.parquet", parquet())},
        data={"name": "d"},
    )
    check("POST", "/v1/audits", "member", json={})
    check("POST", "/v1/endpoints/e1/feedback", "member", json={"items": []})
    # Promotion, canaries and overrides included, and rollback: approvers.
    check("POST", f"/v1/jobs/{job}/promote", "approver", json={"endpoint": "e1"})
    check(
        "POST",
        f"/v1/jobs/{job}/promote",
        "approver",
        json={"endpoint": "e1", "traffic": {"new": 10}, "override": True, "reason": "r"},
    )
    check("POST", "/v1/endpoints/e1/rollback", "approver")
    check("GET", "/v1/users", "admin")
    check("GET", "/v1/audit-log", "admin")
    check("POST", "/v1/users", "admin", json={"name": "n", "role": "viewer"})


def test_every_state_change_needs_a_member_unless_declared(api: Api) -> None:
    """A route that forgets to declare its role still gets the default: a viewer changes
    nothing but their own tokens."""
    _, viewer = api.user("v", "viewer")
    paths = {p: ops for p, ops in api.app.openapi()["paths"].items() if p.startswith("/v1")}
    own_tokens = {("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{token_id}")}
    changes = [
        (m.upper(), p)
        for p, ops in paths.items()
        for m in ops
        if m.upper() != "GET" and (m.upper(), p) not in own_tokens
    ]
    assert len(changes) >= 10
    for method, template in changes:
        path = template.replace("{", "x").replace("}", "")
        r = api.as_(viewer, method, path)
        assert r.status_code == 403, (method, path, r.text)
    assert api.as_(viewer, "GET", "/v1/jobs").status_code == 200


# --- audit log --------------------------------------------------------------------------------


def test_audit_log_records_successes_and_refusals(api: Api) -> None:
    viewer_id, viewer = api.user("vera", "viewer")
    before = len(api.audit_rows(limit=1000))
    r = api.admin("POST", "/v1/jobs", json=SPEC, headers={"X-Request-ID": "req-42"})
    assert r.status_code == 202 and r.headers["X-Request-ID"] == "req-42"
    job_id = r.json()["id"]
    refused = api.as_(viewer, "POST", f"/v1/jobs/{job_id}/cancel")
    assert refused.status_code == 403
    anonymous = api.c.post("/v1/jobs", json=SPEC)
    assert anonymous.status_code == 401
    api.admin("GET", "/v1/jobs")  # reads are not audited
    api.c.post("/v1/internal/jobs/x/events", json={"events": []})  # nor the cluster's calls

    rows = api.audit_rows(limit=1000)
    new = rows[: len(rows) - before]
    assert [(e["method"], e["route"], e["status"]) for e in new] == [
        ("POST", "/v1/jobs", 401),
        ("POST", "/v1/jobs/{job_id}/cancel", 403),
        ("POST", "/v1/jobs", 202),
    ]
    ok, no, anon = new[2], new[1], new[0]
    assert (ok["actor_name"], ok["resource_id"], ok["request_id"]) == (
        "bootstrap",
        job_id,
        "req-42",
    )
    assert ok["token_id"] and ok["client_ip"] == "testclient" and ok["path"] == "/v1/jobs"
    assert (no["actor_id"], no["actor_name"], no["resource_id"]) == (viewer_id, "vera", job_id)
    assert no["request_id"] == refused.headers["X-Request-ID"]
    assert anon["actor_id"] is None and anon["token_id"] is None
    # Filters: by actor (id or name) and time; newest first.
    assert [e["id"] for e in api.audit_rows(actor="vera")] == [no["id"]]
    assert [e["id"] for e in api.audit_rows(actor=viewer_id)] == [no["id"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert api.audit_rows(since=future) == []
    assert len(api.audit_rows(limit=2)) == 2
    assert (
        api.admin("GET", "/v1/audit-log", params={"since": "2026-01-01T00:00:00"}).status_code
        == 422
    )
    # Only admins read it.
    assert api.as_(viewer, "GET", "/v1/audit-log").status_code == 403


def test_audit_log_is_append_only_in_the_database(api: Api) -> None:
    api.admin("POST", "/v1/users", json={"name": "u", "role": "viewer"})
    assert api.audit_rows()
    for sql in ("UPDATE audit_log SET status = 200", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), api.db.engine.begin() as conn:
            conn.execute(text(sql))
    assert api.audit_rows()[0]["status"] == 201


# --- limits -----------------------------------------------------------------------------------


def test_body_and_upload_size_limits_are_413(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=2000, max_upload_bytes=4000)
    big = {**SPEC, "name": "j", "description": "x" * 3000}
    r = api.admin("POST", "/v1/jobs", json=big)
    assert r.status_code == 413
    assert r.json() == {
        "error": "payload_too_large",
        "detail": "a request body is at most 2000 bytes",
        "fields": [],
    }

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"name": "j", "x": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    r = api.admin(
        "POST", "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    # A small body still works (the limit reads it and hands it on whole).
    assert api.admin("POST", "/v1/jobs", json=SPEC).status_code == 202
    # Uploads have their own limit, checked before the file is spooled anywhere.
    small, large = parquet(5), b"PAR1" + b"\0" * (4000 + 1024 * 1024)
    ok = api.admin("POST", "/v1/datasets", files={"file": ("s.parquet", small)}, data={"name": "s"})
    assert ok.status_code == 201, ok.text
    r = api.admin("POST", "/v1/datasets", files={"file": ("l.parquet", large)}, data={"name": "l"})
    assert r.status_code == 413 and "an upload is at most" in r.json()["detail"]

    def upload_chunks() -> Iterator[bytes]:  # an upload without Content-Length
        yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nl\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="l.parquet"\r\n\r\n'
        for _ in range(6):
            yield b"\0" * 256 * 1024
        yield b"\r\n--b--\r\n"

    r = api.admin(
        "POST",
        "/v1/datasets",
        content=upload_chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and "an upload is at most" in r.json()["detail"]
    assert api.admin("GET", "/v1/datasets").json()["total"] == 1 + len(BUILTIN)
    # Refused requests are audited, with whose token it was.
    rows = api.audit_rows(limit=2)
    assert [(e["status"], e["actor_name"], e["path"]) for e in rows] == [
        (413, "bootstrap", "/v1/datasets"),
        (413, "bootstrap", "/v1/datasets"),
    ]
    # One refused from its Content-Length, one while its form was parsed: both after the
    # route was found and its caller authenticated (services/api/gate.py), so both name it.
    assert [e["route"] for e in rows] == ["/v1/datasets", "/v1/datasets"]


def test_rate_limit_per_token_is_429_with_retry_after(make_api: ApiFactory) -> None:
    api = make_api(rate_limit_per_minute=3)
    _, other = api.user("other", "viewer")  # two of the admin's three requests
    assert api.as_(other, "GET", "/v1/me").status_code == 200
    assert api.admin("GET", "/v1/jobs").status_code == 200  # the third
    r = api.admin("GET", "/v1/jobs")
    assert r.status_code == 429 and r.json()["error"] == "rate_limited"
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 20  # one request back every 20 s at 3 a minute
    # Per token: another token has its own bucket; the open routes have none.
    assert api.as_(other, "GET", "/v1/me").status_code == 200
    for _ in range(5):
        assert api.c.get("/healthz").status_code == 200
        assert api.c.get("/readyz").status_code == 200
        # A scrape is authenticated (an admin's token here) but not rate-limited.
        assert api.admin("GET", "/metrics").status_code == 200


def test_metrics_take_the_metrics_token_or_an_admins_and_nothing_else(
    make_api: ApiFactory,
) -> None:
    # The series name endpoints, their input features, live accuracy and drift: a security
    # probe read them all without a token.
    api = make_api(metrics_token="scrape-me")
    _, viewer = api.user("v", "viewer")
    _, member = api.user("m", "member")
    assert api.c.get("/metrics").status_code == 401
    assert api.as_("not-a-token", "GET", "/metrics").status_code == 401
    for token in (viewer, member):
        r = api.as_(token, "GET", "/metrics")
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    for token in ("scrape-me", ADMIN):
        r = api.as_(token, "GET", "/metrics")
        assert r.status_code == 200 and "crucible_api_requests_total" in r.text


def test_rate_limit_refills(make_api: ApiFactory) -> None:
    api = make_api(rate_limit_per_minute=60)  # one a second, in bursts of 60
    started = time.monotonic()
    served = 0
    while (r := api.admin("GET", "/v1/me")).status_code == 200:
        served += 1
        assert served < 200
    assert r.status_code == 429
    # The burst, plus what refilled meanwhile, and no more.
    assert 60 <= served <= 60 + (time.monotonic() - started) + 1
    time.sleep(int(r.headers["Retry-After"]))
    assert api.admin("GET", "/v1/me").status_code == 200


def test_cors_is_off_by_default(make_api: ApiFactory) -> None:
    preflight = {
        "Origin": "https://elsewhere.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization",
    }
    off = make_api()
    r = off.c.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = off.admin("GET", "/v1/jobs", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in r.headers
    on = make_api(cors_origins="https://ui.example")
    r = on.c.options("/v1/jobs", headers={**preflight, "Origin": "https://ui.example"})
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    r = on.c.options("/v1/jobs", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
