"""The gateway keeps the cluster's node resources a few seconds: a submission under load asks
Ray at most once per ``nodes_ttl_s``, and a Ray that does not answer costs one short timeout,
not the client's whole timeout per submission (found by benchmarks/api_load.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from services.core.errors import UpstreamFailed
from services.orchestrator import ray_gateway
from services.orchestrator.ray_gateway import RayGateway


class FakeRay:
    """Ray's node summary behind an httpx mock transport; counts the questions."""

    def __init__(self) -> None:
        self.asked = 0
        self.down = False
        self.cpus = 2.0
        self.hold: threading.Event | None = None  # when set: each answer waits for it

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/nodes"
        self.asked += 1
        if self.hold is not None:
            self.hold.wait(10)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        nodes = [
            {"raylet": {"state": "ALIVE", "resourcesTotal": {"CPU": self.cpus}}},
            {"raylet": {"state": "DEAD", "resourcesTotal": {"CPU": 8.0}}},
        ]
        return httpx.Response(200, json={"data": {"summary": nodes}})


def gateway(ray: FakeRay, ttl: float = 60.0) -> RayGateway:
    gw = RayGateway("http://ray", None, nodes_ttl_s=ttl)
    gw.http = httpx.Client(base_url="http://ray", transport=httpx.MockTransport(ray.handle))
    return gw


def test_ray_is_asked_once_per_ttl() -> None:
    ray = FakeRay()
    gw = gateway(ray, ttl=0.3)
    assert gw.node_resources() == [{"CPU": 2.0}]  # the dead node is left out
    ray.cpus = 4.0
    for _ in range(20):
        assert gw.node_resources() == [{"CPU": 2.0}]
    assert ray.asked == 1
    time.sleep(0.35)
    assert gw.node_resources() == [{"CPU": 4.0}]
    assert ray.asked == 2


def test_a_failure_is_remembered_as_long() -> None:
    ray = FakeRay()
    ray.down = True
    gw = gateway(ray)
    for _ in range(5):
        with pytest.raises(UpstreamFailed, match="unreachable"):
            gw.node_resources()
    assert ray.asked == 1


def test_while_one_caller_asks_again_the_others_take_the_last_answer() -> None:
    ray = FakeRay()
    gw = gateway(ray, ttl=0.2)
    assert gw.node_resources() == [{"CPU": 2.0}]
    time.sleep(0.25)
    ray.cpus, ray.hold = 4.0, threading.Event()
    got: list[list[dict[str, float]]] = []
    asking = threading.Thread(target=lambda: got.append(gw.node_resources()))
    asking.start()
    while ray.asked < 2:
        time.sleep(0.01)
    started = time.monotonic()
    assert gw.node_resources() == [{"CPU": 2.0}]  # not held by the question in flight
    assert time.monotonic() - started < 0.5
    ray.hold.set()
    asking.join(5)
    assert got == [[{"CPU": 4.0}]]
    assert gw.node_resources() == [{"CPU": 4.0}]
    assert ray.asked == 2


@pytest.fixture
def hung_ray() -> Iterator[str]:
    """A dashboard that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_a_hung_ray_costs_one_short_timeout_not_one_per_call(
    hung_ray: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_gateway, "NODES_TIMEOUT_S", 0.3)
    gw = RayGateway(hung_ray, None, timeout=30.0)
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(UpstreamFailed):
            gw.node_resources()
    assert time.monotonic() - started < 3.0  # not 20 x 30 s, nor 20 x 0.3 s
    gw.close()
