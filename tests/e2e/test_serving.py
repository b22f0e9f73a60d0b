"""Serving on a real stack: canary splits, overload, batching and input checks of a promoted
endpoint, through Serve's HTTP proxy as clients reach it."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from jobs.bundle import load_bundle
from jobs.datasets import BUILTIN

from .conftest import Stack
from .test_promotion import tiny_spec
from .test_stack import run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_jobs(stack: Stack) -> list[str]:
    c = stack.client
    jobs = [c.submit_job(tiny_spec(f"serve-{i}", seed=10 + i))["id"] for i in range(2)]
    for job_id in jobs:
        assert c.wait(job_id, timeout=600)["status"] == "succeeded", c.job(job_id)["error"]
    return jobs


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return pq.read_table(BUILTIN["adult"].path).slice(0, 200).drop(["income"]).to_pylist()


def promote(stack: Stack, job_id: str, endpoint: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{stack.url}/v1/jobs/{job_id}/promote",
        json={"endpoint": endpoint, **body},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_canary_gets_its_share_of_requests(
    stack: Stack, two_jobs: list[str], rows: list[dict[str, Any]]
) -> None:
    stable = promote(stack, two_jobs[0], "canary")
    # As a user starts one: the CLI, with its serving overrides.
    out = run_cli(
        stack,
        "promote",
        two_jobs[1],
        "canary",
        "--traffic",
        "30",
        "--serving",
        "max_batch_size=4",
        "--json",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    canary = json.loads(out.stdout)
    assert canary["traffic"] == 30
    headers = {"Authorization": f"Bearer {stack.token}"}
    served: collections.Counter[str] = collections.Counter()
    with httpx.Client(timeout=30) as http:
        assert http.post(stable["url"], json={"instances": rows[:1]}).status_code == 401
        for i in range(400):
            r = http.post(stable["url"], json={"instances": [rows[i % len(rows)]]}, headers=headers)
            assert r.status_code == 200, r.text
            served[r.json()["model_id"]] += 1
    assert set(served) == {stable["model_id"], canary["model_id"]}
    share = served[canary["model_id"]] / 400
    # Binomial(400, 0.3): sd 0.023; 0.1 is more than four of them.
    assert abs(share - 0.3) < 0.1, served

    # Full promotion of the canary: every request now goes to it, straight from the proxy.
    promote(stack, two_jobs[1], "canary")
    ep = stack.client.endpoint("canary")
    assert ep["model_id"] == canary["model_id"] and ep["canary"] is None
    assert ep["serving"]["max_batch_size"] == 4
    with httpx.Client(timeout=30) as http:
        ids = {
            http.post(stable["url"], json={"instances": rows[:1]}, headers=headers).json()[
                "model_id"
            ]
            for _ in range(20)
        }
    assert ids == {canary["model_id"]}
    # And back, as on-call would: the version the canary replaced serves again.
    back = run_cli(stack, "endpoints", "rollback", "canary", "--json", timeout=300)
    assert back.returncode == 0, back.stdout + back.stderr
    assert json.loads(back.stdout)["model_id"] == stable["model_id"]


def test_overload_is_a_quick_503_with_retry_after(
    stack: Stack, two_jobs: list[str], rows: list[dict[str, Any]]
) -> None:
    out = promote(
        stack,
        two_jobs[0],
        "overload",
        serving={"max_ongoing_requests": 1, "max_queued_requests": 1, "log_sample_rate": 0},
    )
    # 8,000 rows a request: tens of milliseconds of work each, encoded once.
    heavy = json.dumps({"instances": rows * 40}).encode()
    headers = {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"}

    def call(_: int) -> tuple[int, str | None, float]:
        started = time.monotonic()
        r = httpx.post(out["url"], content=heavy, headers=headers, timeout=120)
        return r.status_code, r.headers.get("retry-after"), time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        results = list(pool.map(call, range(48)))
    codes = collections.Counter(code for code, _, _ in results)
    # Every request got an answer: the ones beyond the queue a 503 telling when to retry.
    assert set(codes) <= {200, 503}, codes
    assert codes[200] >= 2 and codes[503] >= 1, codes
    assert all(retry == "1" for code, retry, _ in results if code == 503)
    # A rejection does not wait its turn behind the queue: the quickest ones come back before
    # the slowest answer.
    rejected = min(t for code, _, t in results if code == 503)
    answered = max(t for code, _, t in results if code == 200)
    assert rejected < answered, (rejected, answered)


def test_batched_answers_equal_the_bundle_offline(
    stack: Stack, two_jobs: list[str], rows: list[dict[str, Any]]
) -> None:
    out = promote(
        stack,
        two_jobs[0],
        "batched",
        serving={"max_batch_size": 16, "batch_wait_timeout_ms": 20},
    )
    model = stack.client.model(out["model_id"])
    predictor = load_bundle(model["bundle_uri"], model["bundle_digest"])
    expected = predictor.predict(rows[:64])
    headers = {"Authorization": f"Bearer {stack.token}"}

    def call(i: int) -> dict[str, Any]:
        r = httpx.post(out["url"], json={"instances": [rows[i]]}, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        return dict(r.json())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(64)))
    for i, a in enumerate(answers):
        assert a["predictions"] == [expected["predictions"][i]]
        for cls, p in a["probabilities"][0].items():
            assert abs(p - expected["probabilities"][i][cls]) < 1e-6


def test_bad_instances_are_422_naming_the_instance_and_column(
    stack: Stack, two_jobs: list[str], rows: list[dict[str, Any]]
) -> None:
    out = promote(stack, two_jobs[0], "checked")
    headers = {"Authorization": f"Bearer {stack.token}"}
    missing = [rows[0], {k: v for k, v in rows[1].items() if k != "age"}]
    wrong = [{**rows[0], "age": "old"}]
    for instances, loc in ((missing, ["instances", 1, "age"]), (wrong, ["instances", 0, "age"])):
        r = httpx.post(out["url"], json={"instances": instances}, headers=headers, timeout=30)
        assert r.status_code == 422, r.text
        assert r.json()["fields"][0]["loc"] == loc, r.text
    r = httpx.post(out["url"], json={"instances": []}, headers=headers, timeout=30)
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == ["instances"]
    r = httpx.post(out["url"], content=b"{not json", headers=headers, timeout=30)
    assert r.status_code == 400

    # The same through the CLI, by the endpoint's name.
    ok = run_cli(stack, "predict", "checked", json.dumps(rows[:2]))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    answer = json.loads(ok.stdout)
    assert len(answer["predictions"]) == 2 and answer["model_id"] == out["model_id"]
    bad = run_cli(stack, "predict", "checked", json.dumps(missing), COLUMNS="300")
    assert bad.returncode == 2 and "instances[1] is missing column 'age'" in bad.stdout


def test_cli_audit_show_prints_each_check_and_opens_the_report(
    stack: Stack, two_jobs: list[str], tmp_path: Path
) -> None:
    as_json = run_cli(stack, "audit", "show", two_jobs[0], "--json")
    assert as_json.returncode == 0, as_json.stderr
    audit = json.loads(as_json.stdout)
    assert audit["checks"], "tiny_spec audits sex with the default limits"
    human = run_cli(stack, "audit", "show", two_jobs[0], COLUMNS="300")
    assert human.returncode == 0, human.stderr
    verdict = "passed" if audit["passed"] else "failed"
    assert f"audit {verdict}" in human.stdout
    for check in audit["checks"]:
        assert check["reason"][:60] in human.stdout.replace("\n", " ")
    # --open hands the saved report to the user's browser ($BROWSER here records what it got).
    seen = tmp_path / "opened"
    browser = f"{sys.executable} -c \"import sys; open('{seen}', 'w').write(sys.argv[1])\" %s"
    opened = run_cli(stack, "audit", "show", two_jobs[0], "--open", BROWSER=browser)
    assert opened.returncode == 0, opened.stderr
    page = Path(seen.read_text().removeprefix("file://"))
    assert page.read_text().lstrip().lower().startswith("<!doctype html")
    missing = run_cli(stack, "audit", "show", "job_nope")
    assert missing.returncode == 2 and "Traceback" not in missing.stdout + missing.stderr


def test_logged_predictions_give_live_accuracy_and_a_drift_alert(
    stack: Stack, two_jobs: list[str]
) -> None:
    """Through the real endpoint: the replica logs each prediction, feedback by request id
    makes live accuracy, and a shifted input stream raises the drift alert."""
    window = 300
    out = promote(
        stack,
        two_jobs[0],
        "watched",
        serving={"log_sample_rate": 1.0, "monitoring_window": window, "drift_threshold": 0.2},
    )
    table = pq.read_table(BUILTIN["adult"].path).slice(1000, 2 * window)
    labels = table.column("income").to_pylist()
    rows = table.drop(["income"]).to_pylist()
    c = stack.client

    def send(batch: list[dict[str, Any]], prefix: str) -> list[tuple[str, list[Any]]]:
        sent = []
        with httpx.Client(timeout=30) as http:
            for start in range(0, len(batch), 10):
                rid = f"{prefix}-{start}"
                r = http.post(
                    out["url"],
                    json={"instances": batch[start : start + 10]},
                    headers={"Authorization": f"Bearer {stack.token}", "X-Request-ID": rid},
                )
                assert r.status_code == 200, r.text
                assert r.json()["request_id"] == rid
                sent.append((rid, r.json()["predictions"]))
        return sent

    def logged_at_least(n: int) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while (fig := c.monitoring("watched"))["logged"] < n:
            assert time.monotonic() < deadline, fig
            time.sleep(0.5)
        return fig

    sent = send(rows[:window], "plain")
    logged_at_least(window)
    items, right = [], 0
    for rid, predictions in sent:
        start = int(rid.rsplit("-", 1)[1])
        for i, predicted in enumerate(predictions):
            items.append({"request_id": rid, "index": i, "label": labels[start + i]})
            right += predicted == labels[start + i]
    assert c.feedback("watched", items) == {"matched": window, "unmatched": 0}
    fig = c.monitoring("watched")
    (served,) = fig["models"]
    assert served["model_id"] == out["model_id"] and served["labelled"] == window
    assert served["accuracy"] == pytest.approx(right / window)
    assert served["drift"]["status"] == "ok" and fig["alert"] is None, served["drift"]

    # The same people, thirty years older and working twice the hours.
    shifted = [
        {**r, "age": r["age"] + 30, "hours_per_week": r["hours_per_week"] * 2}
        for r in rows[window:]
    ]
    send(shifted, "shifted")
    # The window (the newest 300) fills with the shifted rows as their logs arrive.
    deadline = time.monotonic() + 60
    while (fig := c.monitoring("watched"))["alert"] != "drift":
        assert time.monotonic() < deadline, fig["models"][0]["drift"]
        time.sleep(0.5)
    drift = fig["models"][0]["drift"]["features"]
    assert drift["age"]["drifted"] and drift["hours_per_week"]["drifted"]
    assert not drift["sex"]["drifted"]
    events = c.endpoint_events("watched")
    assert [e["type"] for e in events] == ["drift_alert_raised"]
    assert c.endpoint("watched")["alert"] == "drift"
