"""What a promoted endpoint shows and withstands on a real stack, through Serve's HTTP proxy
as anyone on the network reaches it: the route listing names no model, hostile bodies get
4xx (never 500, never a read of 80 MB), a replica that cannot come back answers 503 at once,
and an upgrade renames what an older API deployed without dropping a request."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from jobs.datasets import BUILTIN

from .conftest import Stack
from .test_promotion import Traffic, tiny_spec

pytestmark = pytest.mark.e2e

ENDPOINT = "exposed"
OPAQUE = re.compile(r"app-[0-9a-f]{24}")


@pytest.fixture(scope="module")
def job(stack: Stack) -> str:
    """A trained job on Adult: one the stack has already (training is most of a minute on
    two cores), else a tiny one."""
    c = stack.client
    for j in c.jobs(status="succeeded"):
        spec = j.get("spec") or {}
        if spec.get("dataset", {}).get("id") == "ds_builtin_adult" and (
            spec.get("model", {}).get("architecture", "mlp") == "mlp"
        ):
            return str(j["id"])
    job_id = str(c.submit_job(tiny_spec("exposure", seed=21))["id"])
    assert c.wait(job_id, timeout=600)["status"] == "succeeded", c.job(job_id)["error"]
    return job_id


@pytest.fixture(scope="module")
def served(stack: Stack, job: str) -> dict[str, Any]:
    return stack.client.promote(job, ENDPOINT, override_reason="e2e: serving exposure")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return pq.read_table(BUILTIN["adult"].path).slice(0, 3).drop(["income"]).to_pylist()


def serve_base(served: dict[str, Any]) -> str:
    return str(served["url"]).rsplit("/", 1)[0]


def routes(served: dict[str, Any]) -> dict[str, str]:
    """GET /-/routes as anyone can: no token."""
    r = httpx.get(f"{serve_base(served)}/-/routes", timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def serve_apps(stack: Stack) -> dict[str, Any]:
    r = httpx.get(
        f"{stack.dashboard_url}/api/serve/applications/",
        headers={"Authorization": f"Bearer {stack.ray_token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_routes_name_no_model_and_hostile_bodies_are_4xx(
    stack: Stack, served: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    listed = routes(served)
    assert OPAQUE.fullmatch(listed[f"/{ENDPOINT}"]), listed
    assert all(OPAQUE.fullmatch(app) for app in listed.values()), listed
    shown = str(listed)
    assert "mdl_" not in shown and served["model_id"] not in shown and "--" not in shown
    assert not [route for route in listed if route.startswith("/_")], listed

    headers = {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"}
    url = served["url"]
    # 80 MB, refused from its Content-Length; then the same without one (chunked).
    big = b'{"instances": [' + b" " * (80 * 1024 * 1024) + b"]}"
    started = time.monotonic()
    r = httpx.post(url, content=big, headers=headers, timeout=60)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "payload_too_large" and r.json()["fields"] == []
    print(f"80 MB body refused in {time.monotonic() - started:.2f}s")

    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(12):
            yield b" " * (1024 * 1024)
        yield b"]}"

    r = httpx.post(url, content=chunks(), headers=headers, timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text

    # Numbers JSON has not, or that no float32 input can hold: 422 naming where.
    template = json.dumps({"instances": [{**rows[0], "hours_per_week": "VALUE"}]})
    for value in ("-Infinity", "Infinity", "NaN", "1e308", "1e400"):
        raw = template.replace('"VALUE"', value)
        r = httpx.post(url, content=raw, headers=headers, timeout=30)
        assert r.status_code == 422, (value, r.text)
        assert r.json()["fields"][0]["loc"] == ["instances", 0, "hours_per_week"], value


def test_an_upgrade_renames_plain_applications_without_dropping_a_request(
    stack: Stack, served: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """As an older API left it: the endpoint's application under its plain name
    (``<endpoint>--<model id>``, the name /-/routes showed). The new API's first config push
    starts a renamed twin beside it and moves the route once the twin runs."""
    plain = f"{ENDPOINT}--{served['model_id']}"
    details = serve_apps(stack)
    configs = []
    for app in details["applications"].values():
        config = app["deployed_app_config"]
        if config.get("route_prefix") == f"/{ENDPOINT}":
            config = {**config, "name": plain}
            for d in config["deployments"]:
                d["user_config"].pop("live", None)  # an older API did not send it
        configs.append(config)
    http_options = {k: details["http_options"][k] for k in ("host", "port")}
    r = httpx.put(
        f"{stack.dashboard_url}/api/serve/applications/",
        json={"proxy_location": "HeadOnly", "http_options": http_options, "applications": configs},
        headers={"Authorization": f"Bearer {stack.ray_token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while routes(served).get(f"/{ENDPOINT}") != plain or (
        serve_apps(stack)["applications"].get(plain, {}).get("status") != "RUNNING"
    ):
        assert time.monotonic() < deadline, serve_apps(stack)["applications"].get(plain)
        time.sleep(0.5)

    traffic = Traffic(served["url"], stack.token, rows)
    traffic.start()
    try:
        # The upgrade: the API starts again (here: killed; `up` starts it again).
        api_pid = int((stack.data_dir / "api.pid").read_text())
        os.kill(api_pid, signal.SIGKILL)
        started = time.monotonic()
        while (name := routes(served).get(f"/{ENDPOINT}")) == plain:
            assert time.monotonic() - started < 90, "the route did not move off the plain name"
            time.sleep(0.5)
        print(f"renamed {time.monotonic() - started:.1f}s after the API was killed")
        assert name is not None and OPAQUE.fullmatch(name), name
        while plain in serve_apps(stack)["applications"]:
            assert time.monotonic() - started < 120, "the plain application was not dropped"
            time.sleep(0.5)
        count = traffic.count
        time.sleep(1)
        assert traffic.count > count  # still answering on the renamed application
    finally:
        traffic.stop.set()
        traffic.join(timeout=60)
    assert traffic.failures == []
    assert traffic.served == [served["model_id"]]
    assert stack.client.endpoint(ENDPOINT)["model_id"] == served["model_id"]


def replica_pids(stack: Stack) -> list[int]:
    (app,) = [
        a for a in serve_apps(stack)["applications"].values() if a["route_prefix"] == f"/{ENDPOINT}"
    ]
    replicas = app["deployments"]["ModelServer"]["replicas"]
    return [int(r["pid"]) for r in replicas if r.get("state") == "RUNNING" and r.get("pid")]


def test_a_replica_that_cannot_load_its_bundle_again_answers_503_at_once(
    stack: Stack, served: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """The bundle no longer matches its digest and the replica dies: the one Serve starts in
    its place answers 503 with Retry-After within seconds (before: every request waited for a
    replica that never came), and serves again once the bundle is back."""
    weights = Path(stack.client.model(served["model_id"])["bundle_uri"]) / "model.safetensors"
    good = weights.read_bytes()
    headers = {"Authorization": f"Bearer {stack.token}"}
    body = {"instances": rows[:1]}
    (pid,) = replica_pids(stack)
    weights.write_bytes(good + b"tampered")
    try:
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with httpx.Client(timeout=30) as http:
            while (r := http.post(served["url"], json=body, headers=headers)).status_code == 200:
                # Answered by the old replica until Serve sees it is gone.
                assert time.monotonic() - killed < 30
                time.sleep(0.1)
            took = time.monotonic() - killed
            print(f"503 {took:.1f}s after the replica was killed")
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5" and r.json()["error"] == "unavailable"
            assert took < 30
            for _ in range(5):
                started = time.monotonic()
                assert http.post(served["url"], json=body, headers=headers).status_code == 503
                assert time.monotonic() - started < 2
    finally:
        weights.write_bytes(good)
    deadline = time.monotonic() + 60
    while (
        r := httpx.post(served["url"], json=body, headers=headers, timeout=30)
    ).status_code != 200:
        assert r.status_code == 503, r.text
        assert time.monotonic() < deadline, "the replica did not load the restored bundle"
        time.sleep(0.5)
    assert r.json()["model_id"] == served["model_id"]
    assert replica_pids(stack) != [pid]
