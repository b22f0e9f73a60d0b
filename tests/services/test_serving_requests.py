"""What a serving replica makes of hostile requests, without Ray: the replica classes
(services/serving/app.py ModelServer, split.py TrafficSplit) run as plain ASGI apps over a real
bundle, as Serve would call them (Serve hands ``__call__`` a Starlette request and sends back
its response).

Non-finite numbers (JSON's ``NaN``/``Infinity`` literals Python accepts, numbers too large for
a float, numbers that overflow once scaled, outputs that overflow inside the network) are 422s
naming the instance; bodies over the limit are 413 before they are read; a live version whose
bundle cannot be loaded answers 503 with Retry-After and recovers by itself. The Serve config
the deployer builds names no endpoint or model (GET /-/routes shows application names).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from starlette.requests import Request
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from jobs.bundle import OutputHead, save_bundle
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.spec import MLPSpec, ServingSpec
from services.config import Settings
from services.orchestrator.ray_gateway import RayGateway
from services.orchestrator.serve_deployer import (
    EndpointState,
    EndpointTarget,
    ServeDeployer,
    ServingAccess,
)
from services.serving import app as serving_app
from services.serving.app import ModelServer
from services.serving.split import TrafficSplit

TOKEN = "serving-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
ROW = {"x": 1.0, "c": "a"}


def bundle(folder: Path, weight: float | None = None) -> tuple[Path, str]:
    """A two-column classifier (numeric ``x``, text ``c``); ``weight`` sets every weight, so
    that a large input surely overflows inside the network."""
    cols = {"x": np.array([1.0, 2.0, 3.0]), "c": np.array(["a", "b", "a"], dtype=object)}
    pre = Preprocessor.fit(cols, {"x": "numeric", "c": "categorical"})
    spec = MLPSpec(hidden_sizes=[4])
    model = build_model(spec, pre.example_shape, 2)
    state = model.state_dict()
    if weight is not None:
        state = {k: torch.full_like(v, weight) for k, v in state.items()}
    head = OutputHead("classification", ["no", "yes"])
    digest = save_bundle(folder, state, spec, pre, head, [ROW], {"job_id": "job_1"})
    return folder, digest


@dataclass
class Replica:
    """A replica object behind an ASGI app that counts the body bytes it was handed."""

    server: Any
    received: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return

        async def counted() -> Message:
            message = await receive()
            self.received += len(message.get("body", b""))
            return message

        response = await self.server(Request(scope, counted))
        await response(scope, receive, send)


def user_config(**extra: Any) -> dict[str, Any]:
    return {"token_hashes": [hashlib.sha256(TOKEN.encode()).hexdigest()], **extra}


def model_server(folder: Path, digest: str, **config: Any) -> Any:
    # The class under @serve.deployment, made and configured as a Serve replica would.
    server = ModelServer.func_or_class(str(folder), digest, "mdl_test", "e")  # type: ignore[attr-defined]
    server.reconfigure(user_config(**{"live": True, **config}))
    return server


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Replica, TestClient]]:
    replica = Replica(model_server(*bundle(tmp_path / "b")))
    with TestClient(replica) as http:
        yield replica, http


def post(http: TestClient, raw: str | bytes) -> Any:
    return http.post("/", content=raw, headers=HEADERS)


# --- non-finite numbers ---------------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-2E+999"])
def test_non_finite_numbers_are_422_naming_instance_and_column(
    served: tuple[Replica, TestClient], literal: str
) -> None:
    _, http = served
    raw = '{"instances": [{"x": 1, "c": "a"}, {"x": ' + literal + ', "c": "b"}]}'
    r = post(http, raw)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid"
    assert body["fields"][0]["loc"] == ["instances", 1, "x"]
    assert "instances[1].x is not a finite number" in body["detail"]


def test_non_finite_literals_are_refused_wherever_they_are(
    served: tuple[Replica, TestClient],
) -> None:
    """Also in a column the model does not read, and in a text column: JSON has no such
    numbers, and a replica that took them would log them as features."""
    _, http = served
    for raw, loc in (
        ('{"instances": [{"x": 1, "c": "a", "note": NaN}]}', ["instances", 0, "note"]),
        ('{"instances": [{"x": 1, "c": Infinity}]}', ["instances", 0, "c"]),
        ('{"instances": [{"x": 1, "c": "a", "v": [1, [2, -Infinity]]}]}', ["instances", 0, "v"]),
        ('{"instances": [{"x": 1, "c": "a"}], "meta": {"w": [NaN]}}', ["meta", "w", 0]),
    ):
        r = post(http, raw)
        assert r.status_code == 422, raw
        assert r.json()["fields"][0]["loc"] == loc, raw


def test_numbers_that_overflow_once_scaled_are_422(served: tuple[Replica, TestClient]) -> None:
    """1e308 is a float, but standardised and cast to float32 (the model's input) it is inf;
    an integer of 400 digits is no float at all."""
    _, http = served
    for value in ("1e308", "-3.5e38", "1" + "0" * 400):
        raw = '{"instances": [{"x": 1, "c": "a"}, {"x": ' + value + ', "c": "a"}]}'
        r = post(http, raw)
        assert r.status_code == 422, (value, r.text)
        assert r.json()["fields"][0]["loc"] == ["instances", 1, "x"], value


def test_an_output_that_is_not_finite_is_422_naming_the_instance(tmp_path: Path) -> None:
    """A finite input the model cannot take: it overflows inside the network, and the
    probabilities come out NaN (which JSON cannot carry: a 500 before)."""
    replica = Replica(model_server(*bundle(tmp_path / "b", weight=10.0)))
    with TestClient(replica) as http:
        r = post(http, json.dumps({"instances": [ROW, {"x": 1e37, "c": "a"}]}))
        assert r.status_code == 422, r.text
        assert r.json()["fields"][0]["loc"] == ["instances", 1]
        assert "output is not a finite number" in r.json()["detail"]
        ok = post(http, json.dumps({"instances": [ROW]}))
        assert ok.status_code == 200 and ok.json()["predictions"] in (["no"], ["yes"])


def test_nested_too_deep_is_400_not_500(served: tuple[Replica, TestClient]) -> None:
    _, http = served
    r = post(http, "[" * 200_000 + "]" * 200_000)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_batch_scoring_still_reads_nan_as_missing() -> None:
    """Only serving is strict: a Parquet NaN in batch scoring is a missing value, filled as in
    training, as before."""
    cols = {"x": np.array([1.0, 2.0, 3.0])}
    pre = Preprocessor.fit(cols, {"x": "numeric"})
    got = pre.columns_from_records([{"x": float("nan")}, {"x": 2.0}])
    assert np.isnan(got["x"][0]) and got["x"][1] == 2.0


# --- body limit -----------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_from_its_content_length_unread(tmp_path: Path) -> None:
    replica = Replica(model_server(*bundle(tmp_path / "b"), max_body_bytes=2000))
    with TestClient(replica) as http:
        big = json.dumps({"instances": [ROW] * 200})
        assert len(big) > 2000
        r = post(http, big)
        assert r.status_code == 413
        assert r.json() == {
            "error": "payload_too_large",
            "detail": "a request body is at most 2000 bytes",
            "fields": [],
        }
        assert r.headers["connection"] == "close"
        assert replica.received == 0
        # Under the limit, the same replica answers.
        assert post(http, json.dumps({"instances": [ROW] * 10})).status_code == 200


def send_chunks(replica: Replica, chunks: list[bytes]) -> tuple[int, Any, int]:
    """POST ``chunks`` as an ASGI server hands a chunked body over (one message each, no
    Content-Length): (status, JSON answer, messages the replica pulled)."""
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        more = pulled < len(chunks)
        return {"type": "http.request", "body": chunks[pulled - 1], "more_body": more}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
    headers.append((b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(replica(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), pulled


def test_a_chunked_body_is_cut_off_once_past_the_limit(tmp_path: Path) -> None:
    replica = Replica(model_server(*bundle(tmp_path / "b"), max_body_bytes=2000))
    row = json.dumps(ROW).encode() + b","
    chunks = [b'{"instances": [', *[row] * 1000, b"{}]}"]
    status, answer, pulled = send_chunks(replica, chunks)
    assert status == 413 and answer["error"] == "payload_too_large"
    # Read up to the chunk that passed the limit, and not one more.
    sizes = np.cumsum([len(c) for c in chunks])
    assert pulled == int(np.argmax(sizes > 2000)) + 1 < len(chunks)
    assert replica.received <= 2000 + len(row)
    # A chunked body within the limit is read whole and answered.
    status, answer, _ = send_chunks(replica, [b'{"instances": [', row[:-1], b"]}"])
    assert status == 200 and len(answer["predictions"]) == 1


def test_the_default_limit_is_the_apis_10_mib(served: tuple[Replica, TestClient]) -> None:
    replica, http = served
    assert replica.server.max_body_bytes == Settings().max_body_bytes == 10 * 1024 * 1024
    r = http.post("/", content=b" " * (10 * 1024 * 1024 + 1), headers=HEADERS)
    assert r.status_code == 413 and replica.received == 0


def test_a_body_without_a_valid_token_is_not_read(served: tuple[Replica, TestClient]) -> None:
    replica, http = served
    r = http.post("/", content=b"x" * 5000, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and replica.received == 0


def test_the_traffic_split_has_the_same_limit() -> None:
    split = TrafficSplit.func_or_class("e")  # type: ignore[attr-defined]
    split.reconfigure(user_config(weights=[], max_body_bytes=1000))
    replica = Replica(split)
    with TestClient(replica) as http:
        r = post(http, b" " * 1001)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        assert replica.received == 0
        r = http.post("/", content=iter([b" " * 600, b" " * 600]), headers=HEADERS)
        assert r.status_code == 413


# --- a live version whose bundle cannot be loaded -------------------------------------------


def test_a_live_replica_without_its_bundle_answers_503_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving_app, "RELOAD_FIRST_S", 0.2)
    folder, digest = bundle(tmp_path / "b")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good + b"tampered")
    args = (str(folder), digest, "mdl_test", "e")
    # A candidate fails to start, as before: the promotion fails.
    candidate = ModelServer.func_or_class(*args)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="does not match the digest"):
        candidate.reconfigure(user_config(live=False))
    # A live version's replica starts, answers 503 at once, and loads the bundle once fixed.
    server = ModelServer.func_or_class(*args)  # type: ignore[attr-defined]
    server.reconfigure(user_config(live=True))
    server.check_health()  # Serve must not restart it: a restart leaves no replica up
    with TestClient(Replica(server)) as http:
        r = post(http, json.dumps({"instances": [ROW]}))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"] == "unavailable" and str(folder) not in r.text
        weights.write_bytes(good)
        deadline = time.monotonic() + 10
        while (r := post(http, json.dumps({"instances": [ROW]}))).status_code == 503:
            assert time.monotonic() < deadline, "the replica did not load the restored bundle"
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["model_id"] == "mdl_test"


# --- what Serve sees of the endpoints -------------------------------------------------------


def test_serve_application_names_say_nothing_of_endpoint_or_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_body_bytes=12345)
    deployer = ServeDeployer(settings, RayGateway("http://127.0.0.1:9", None))
    serving = ServingSpec()

    def target(model: str) -> EndpointTarget:
        return EndpointTarget("fraud", model, "/b", "d" * 64, serving, "prj_1")

    canary = EndpointState(target("mdl_aaa"), target("mdl_bbb"), 10)
    plain = EndpointState(target("mdl_ccc"))
    access = ServingAccess()
    config = deployer.config([canary], access, candidate=target("mdl_ddd"), staged_split=canary)
    names = [a["name"] for a in config["applications"]]
    assert all(re.fullmatch(r"app-[0-9a-f]{24}", n) for n in names), names
    text = json.dumps([[a["name"], a["route_prefix"]] for a in config["applications"]])
    assert "mdl_" not in text and "split" not in text and "candidate" not in text
    # Only the endpoint's own route is on HTTP: what is starting shows nowhere.
    assert [a["route_prefix"] for a in config["applications"]] == [None, None, "/fraud", None, None]
    # Stable (an API restart, another API replica) and keyed (another secret, other names).
    assert deployer.serve_name("fraud--mdl_aaa") == deployer.serve_name("fraud--mdl_aaa")
    other = ServeDeployer(Settings(data_dir=tmp_path / "other"), deployer.gateway)
    assert other.serve_name("fraud--mdl_aaa") != deployer.serve_name("fraud--mdl_aaa")
    # The split reaches its versions by the names Serve knows them by.
    (split,) = [a for a in config["applications"] if a["route_prefix"] == "/fraud"]
    weights = split["deployments"][0]["user_config"]["weights"]
    assert weights == [[deployer.serve_name("fraud--mdl_aaa"), 90], [names[1], 10]]
    # Replicas get the body limit, and whether a version is live (a candidate's is not).
    users = {a["name"]: a["deployments"][0]["user_config"] for a in config["applications"]}
    assert all(u["max_body_bytes"] == 12345 for u in users.values())
    assert users[deployer.serve_name("fraud--mdl_ddd")]["live"] is False
    assert users[deployer.serve_name("fraud--mdl_bbb")]["live"] is True
    live = deployer.config([plain], access)["applications"][0]["deployments"][0]["user_config"]
    assert live["live"] is True
