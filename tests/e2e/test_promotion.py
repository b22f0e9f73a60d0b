"""Blue/green on a real stack: requests sent without pause while an endpoint is promoted to a
new version and rolled back all succeed, and each answer names the version that served it."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from jobs.datasets import BUILTIN
from services.client import CrucibleError

from .conftest import Stack

pytestmark = pytest.mark.e2e


def tiny_spec(name: str, seed: int) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"id": "ds_builtin_adult", "target": "income"},
        "model": {"hidden_sizes": [8]},
        "training": {"epochs": 1, "batch_size": 512},
        "search": {"num_trials": 1, "seed": seed},
        "audit": {"sensitive_features": ["sex"]},
        "promotion": {"require": {"accuracy": {"min": 0.5}}},
    }


class Traffic(threading.Thread):
    """Posts predictions back to back until stopped; keeps every failure and the versions seen."""

    def __init__(self, url: str, token: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.url, self.rows = url, rows
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.served: list[str] = []
        self.count = 0

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                try:
                    r = http.post(self.url, json={"instances": self.rows}, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                self.count += 1
                model_id = r.json()["model_id"]
                if not self.served or self.served[-1] != model_id:
                    self.served.append(model_id)


def test_promotion_and_rollback_drop_no_request(stack: Stack) -> None:
    c = stack.client
    jobs = [c.submit_job(tiny_spec(f"bg-{i}", seed=i))["id"] for i in range(2)]
    for job_id in jobs:
        assert c.wait(job_id, timeout=600)["status"] == "succeeded", c.job(job_id)["error"]

    first = c.promote(jobs[0], "bg")
    rows = pq.read_table(BUILTIN["adult"].path).slice(0, 3).drop(["income"]).to_pylist()
    traffic = Traffic(first["url"], stack.token, rows)
    traffic.start()
    try:
        second = c.promote(jobs[1], "bg")
        assert c.endpoint("bg")["model_id"] == second["model_id"]
        back = c.rollback("bg")
        assert back["model_id"] == first["model_id"]

        # A version whose bundle no longer matches its digest cannot start: the promotion
        # fails and the serving version never stops answering.
        # Bundles (and the checkpoints they came from) of the second job: spoil them all.
        spoiled = [
            p
            for p in stack.data_dir.rglob("model.safetensors")
            if jobs[1] in str(p) and (p.parent / "bundle.json").exists()
        ]
        assert spoiled
        originals = {p: p.read_bytes() for p in spoiled}
        for p, data in originals.items():
            p.write_bytes(data + b"tampered")
        try:
            with pytest.raises(CrucibleError) as failed:
                c.promote(jobs[1], "bg")
        finally:
            for p, data in originals.items():
                p.write_bytes(data)
        assert failed.value.status == 502, failed.value
        assert c.endpoint("bg")["model_id"] == first["model_id"]
    finally:
        traffic.stop.set()
        traffic.join(timeout=60)

    assert traffic.failures == []
    assert traffic.count > 20, traffic.count
    # Each version served in its turn, never back and forth.
    assert traffic.served == [first["model_id"], second["model_id"], first["model_id"]]
    history = c.endpoint("bg")["history"]
    assert [(h["kind"], h["status"]) for h in history[:3]] == [
        ("promote", "failed"),
        ("rollback", "succeeded"),
        ("promote", "succeeded"),
    ]
    lineage = c.model(second["model_id"])["lineage"]
    assert lineage["job_id"] == jobs[1] and lineage["code_version"]["package"]


def test_auto_promotion_deploys_a_job_that_passes_its_gates(stack: Stack) -> None:
    import time

    c = stack.client
    spec = tiny_spec("auto", seed=3)
    spec["promotion"] = {
        "require": {"accuracy": {"min": 0.5}},
        "auto": True,
        "auto_endpoint": "auto-e2e",
    }
    job = c.submit_job(spec)
    assert c.wait(job["id"], timeout=300, poll=0.5)["status"] == "succeeded"
    deadline = time.monotonic() + 120
    while True:
        try:
            endpoint = c.endpoint("auto-e2e")
            if endpoint.get("model_id"):
                break
        except CrucibleError as exc:
            assert exc.status == 404
        assert time.monotonic() < deadline, "the job was not promoted automatically"
        time.sleep(1)
    model = c.model(endpoint["model_id"])
    assert model["lineage"]["job_id"] == job["id"]
    assert endpoint["history"][0]["actor"] != "bootstrap"  # done by the service, not a user
