"""The compressed candidate in the control plane: spec errors, registration, gates judged on
the variant's own figures, the default candidate, and the report. The job's result is posted
as the driver posts it; tests/e2e/test_compression.py runs a real job and serves it."""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.audit import run_audit
from jobs.spec import AuditSpec
from services.core.auth import job_token
from tests.services.test_promotion import ADULT, Api, api

__all__ = ["api"]  # the fixture, shared with the promotion tests

COMPRESS = {"compress": "dynamic_int8", "prune": 0.3}


def audit(positive_rate_of_women: float) -> dict[str, Any]:
    """A real audit document of 400 rows by sex: men get the favourable outcome half the time,
    women at the given rate."""
    sex = np.array(["Male"] * 200 + ["Female"] * 200, dtype=object)
    pred = np.zeros(400, dtype=np.int8)
    pred[:100] = 1
    pred[200 : 200 + int(200 * positive_rate_of_women)] = 1
    truth = np.tile(np.array([1, 0], dtype=np.int8), 200)
    spec = AuditSpec(sensitive_features=["sex"], bootstrap={"resamples": 0})
    return run_audit(truth, pred, {"sex": sex}, spec, positive_label=">50K")


def compressed_report(accuracy: float, passed: bool, job_id: str) -> dict[str, Any]:
    return {
        "method": "l1_prune+dynamic_int8",
        "quantize": "dynamic_int8",
        "prune": 0.3,
        "sparsity": 0.3,
        "original_sparsity": 0.0,
        "size_bytes": 4000,
        "original_size_bytes": 10000,
        "size_ratio": 0.4,
        "deflated_size_bytes": 3000,
        "original_deflated_size_bytes": 9000,
        "latency_ms_p50": 0.5,
        "original_latency_ms_p50": 0.7,
        "latency_batch_rows": 256,
        "latency_device": "cpu",
        "metrics": {"accuracy": accuracy},
        "original_metrics": {"accuracy": 0.85},
        "prediction_agreement": 0.97,
        "audit_passed": passed,
        "original_audit_passed": True,
        "evaluation": {"task": "classification", "accuracy": accuracy},
        "audit": audit(0.3 if passed else 0.35 * 0.5),
        "bundle": {"uri": f"/bundles/{job_id}-compressed", "digest": "cd" * 32},
    }


def succeed(api: Api, promotion: dict[str, Any], compressed: bool) -> str:
    spec = {"name": "j", "dataset": {"id": ADULT, "target": "income"}, "promotion": promotion}
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job_id = str(r.json()["id"])
    evaluation: dict[str, Any] = {"task": "classification", "accuracy": 0.85}
    if compressed:
        evaluation["compression"] = compressed_report(0.78, False, job_id)
    result = {
        "best_trial": {"trial_id": "t1", "config": {}, "metrics": {"val_accuracy": 0.8}},
        "evaluation": evaluation,
        "audit": audit(0.45),
        "bundle": {"uri": f"/bundles/{job_id}", "digest": "ab" * 32},
    }
    events = [
        {"key": "job.running", "type": "job.running", "data": {}},
        {"key": "job.succeeded", "type": "job.succeeded", "data": result},
    ]
    token = job_token(api.settings.resolved_secret_key, job_id)
    r = api.c.post(
        f"/v1/internal/jobs/{job_id}/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return job_id


def fields(r: Any) -> set[tuple[Any, ...]]:
    return {tuple(f["loc"]) for f in r.json()["fields"]}


def test_bad_compression_options_are_422_by_path_and_create_nothing(api: Api) -> None:
    spec = {
        "name": "j",
        "dataset": {"id": ADULT, "target": "income"},
        "promotion": {"compress": "int4", "prune": 1.5},
    }
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    assert fields(r) == {("promotion", "compress"), ("promotion", "prune")}
    assert api.get("/v1/jobs").json()["total"] == 0


def test_the_compressed_variant_is_served_by_default_and_gated_on_its_own_figures(
    api: Api,
) -> None:
    gated = {**COMPRESS, "require": {"accuracy": {"min": 0.8}, "audit_passed": True}}
    job = succeed(api, gated, compressed=True)
    report = api.get(f"/v1/jobs/{job}/evaluation").json()["compression"]
    assert report["size_ratio"] == 0.4 and report["metrics"] == {"accuracy": 0.78}

    # No candidate named: the compressed one, judged on its accuracy and audit, not the best's.
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "small"})
    assert r.status_code == 409, r.text
    failed = {tuple(f["loc"]): f for f in r.json()["fields"]}
    assert failed[("promotion", "require", "accuracy")]["value"] == 0.78
    assert ("promotion", "require", "audit_passed") in failed

    best = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "big", "candidate": "best"})
    assert best.status_code == 200, best.text
    assert best.json()["candidate"] == "best"
    forced = api.post(
        f"/v1/jobs/{job}/promote",
        json={"endpoint": "small", "override": True, "reason": "latency matters more here"},
    )
    assert forced.status_code == 200, forced.text
    out = forced.json()
    assert out["candidate"] == "compressed" and out["overridden"] is True
    assert out["model_id"] != best.json()["model_id"]

    model = api.get(f"/v1/models/{out['model_id']}").json()
    assert model["candidate"] == "compressed" and model["audit_passed"] is False
    assert model["metrics"]["test"] == {"task": "classification", "accuracy": 0.78}
    comp = model["metrics"]["compression"]
    assert comp["size_bytes"] == 4000 and comp["original_size_bytes"] == 10000
    assert "bundle" not in comp and "evaluation" not in comp
    assert model["audit"]["passed"] is False  # the variant's own audit
    # The best model's figures do not carry the variant's report.
    best_model = api.get(f"/v1/models/{best.json()['model_id']}").json()
    assert "compression" not in best_model["metrics"]["test"]
    assert "compression" not in best_model["metrics"]

    html = api.c.get(f"/v1/jobs/{job}/audit.html", headers=api.h).text
    assert "Compressed candidate" in html and "0.780" in html and "0.850" in html
    assert "9.8 KiB" in html and "3.9 KiB (0.40\u00d7)" in html
    # Each fairness check of the best model beside the same check of the variant.
    dp = next(c for c in report["audit"]["checks"] if c["metric"] == "demographic_parity_ratio")
    assert "sex: demographic_parity_ratio" in html and f"{dp['value']:.3f}" in html


def test_the_compressed_candidate_needs_the_spec_to_ask_for_it(api: Api) -> None:
    job = succeed(api, {}, compressed=False)
    r = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e", "candidate": "compressed"})
    assert r.status_code == 409 and "no compressed candidate" in r.json()["detail"]
    plain = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e"})
    assert plain.status_code == 200 and plain.json()["candidate"] == "best"
    bad = api.post(f"/v1/jobs/{job}/promote", json={"endpoint": "e", "candidate": "tiny"})
    assert bad.status_code == 422 and ("candidate",) in fields(bad)
