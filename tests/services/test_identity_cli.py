"""`crucible db upgrade`, `crucible users`, `crucible tokens`, `crucible audit-log` and the SDK's
identity methods (in process: the SDK's HTTP client is a test client of the app)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from services import cli
from services.api.app import create_app
from services.cli import identity, projects
from services.cli import jobs as cli_jobs
from services.client import Crucible, CrucibleError
from services.config import Settings
from services.store.db import MIGRATIONS

ADMIN = "test-admin-token"
run = CliRunner().invoke
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


def test_db_upgrade_prints_the_revision_before_and_after(database_url: str, tmp_path: Path) -> None:
    args = ["db", "upgrade", "--database-url", database_url, "--json"]
    r = run(cli.app, args)
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert first["before"] is None and first["after"] == HEAD
    r = run(cli.app, args)
    assert json.loads(r.output) | {"database": ""} == {
        "database": "",
        "before": HEAD,
        "after": HEAD,
    }
    # --data-dir's SQLite when no URL is given; human output.
    r = run(cli.app, ["db", "upgrade", "--data-dir", str(tmp_path / "d")], env={})
    assert r.exit_code == 0 and f"empty -> {HEAD}" in r.output, r.output
    assert (tmp_path / "d" / "crucible.db").exists()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        bootstrap_token=ADMIN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens there
    )
    application = create_app(settings, reconcile=False)
    with TestClient(application):
        yield application


def sdk(app: FastAPI, token: str) -> Crucible:
    client = Crucible("http://testserver", token)
    client.http = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    return client


def test_users_and_tokens_through_the_cli_and_sdk(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The identity commands call the _client their own module imported.
    monkeypatch.setattr(identity, "_client", lambda url, token: sdk(app, token or ADMIN))

    r = run(cli.app, ["users", "create", "alice", "--role", "member", "--json"])
    assert r.exit_code == 0, r.output
    alice = json.loads(r.output)
    r = run(cli.app, ["users", "create", "bob", "--role", "root"])
    assert r.exit_code == 2  # typer refuses the role
    r = run(cli.app, ["users", "list"], terminal_width=200)
    assert r.exit_code == 0 and "alice" in r.output and "bootstrap" in r.output

    r = run(cli.app, ["tokens", "create", "laptop", "--user", alice["id"]], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "shown once" in r.output
    secret = r.output.strip().splitlines()[-1]
    assert sdk(app, secret).me()["name"] == "alice"

    r = run(cli.app, ["tokens", "list", "--token", secret], terminal_width=200)
    assert r.exit_code == 0 and "laptop" in r.output and secret not in r.output
    token_id = sdk(app, secret).tokens()[0]["id"]
    r = run(cli.app, ["tokens", "revoke", token_id, "--token", secret, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["status"] == "revoked"
    with pytest.raises(CrucibleError) as err:
        sdk(app, secret).me()
    assert err.value.status == 401

    # Another token of alice's expires; admins disable users.
    made = sdk(app, ADMIN).create_token("ci", alice["id"], expires_in_days=30)
    assert made["expires_at"] and sdk(app, made["token"]).me()["role"] == "member"
    r = run(cli.app, ["users", "update", alice["id"], "--disable"], terminal_width=200)
    assert r.exit_code == 0 and "disabled" in r.output
    with pytest.raises(CrucibleError):
        sdk(app, made["token"]).me()

    r = run(cli.app, ["audit-log", "--actor", "bootstrap", "--json"])
    assert r.exit_code == 0
    routes = [e["route"] for e in json.loads(r.output)]
    assert routes[0] == "/v1/users/{user_id}" and "/v1/tokens" in routes
    r = run(cli.app, ["audit-log", "--token", made["token"]])
    assert r.exit_code == 2 and "401" in r.output


def test_projects_through_the_cli_and_sdk(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for module in (identity, projects, cli_jobs):
        monkeypatch.setattr(module, "_client", lambda url, token: sdk(app, token or ADMIN))
    r = run(
        cli.app,
        [
            "projects",
            "create",
            "vision",
            "--quota",
            "max_concurrent_jobs=1",
            "--quota",
            "max_gpus=4",
        ],
        terminal_width=200,
    )
    assert r.exit_code == 0 and "concurrent_jobs=1, gpus=4" in r.output, r.output
    r = run(cli.app, ["projects", "create", "Vision"])
    assert r.exit_code == 2 and "422" in r.output
    r = run(cli.app, ["users", "create", "vera", "--role", "member", "--project", "vision"])
    assert r.exit_code == 0 and "projects vision" in r.output, r.output
    vera = sdk(app, ADMIN).create_token("t", sdk(app, ADMIN).users()[-1]["id"])["token"]
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: j\ndataset: {id: ds_builtin_adult, target: income}\n")
    r = run(cli.app, ["submit", str(spec), "--token", vera, "--json"])
    assert r.exit_code == 0, r.output
    r = run(cli.app, ["submit", str(spec), "--token", vera])
    assert r.exit_code == 2 and "quota max_concurrent_jobs" in r.output, r.output
    r = run(cli.app, ["projects", "show", "vision", "--token", vera], terminal_width=200)
    assert r.exit_code == 0 and "in use: 1 job(s)" in r.output and "vera (member)" in r.output
    r = run(cli.app, ["projects", "quota", "vision", "--quota", "max_concurrent_jobs=null"])
    assert r.exit_code == 0 and "concurrent_jobs" not in r.output.split("\n")[0], r.output
    # Someone else's project does not exist for vera; the default one is not hers.
    r = run(cli.app, ["submit", str(spec), "--project", "default", "--token", vera])
    assert r.exit_code == 2 and "no project 'default'" in r.output
    r = run(cli.app, ["projects", "list", "--token", vera, "--json"])
    assert [p["name"] for p in json.loads(r.output)] == ["vision"]
