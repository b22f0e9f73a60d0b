"""Issue 6's compression claim on the built-in Adult data: a job asked for
``promotion: {compress: dynamic_int8, prune: 0.3}`` builds a compressed variant beside its
best model, reports size, latency, metrics and the audit of both, serves the variant by
default, and the endpoint answers exactly as the compressed bundle does offline."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from jobs.bundle import load_bundle

from .conftest import Stack
from .test_stack import run_cli

pytestmark = pytest.mark.e2e


def test_a_compressed_variant_is_reported_audited_and_served(stack: Stack) -> None:
    c = stack.client
    job = c.submit_job(
        {
            "name": "compressed",
            "dataset": {"id": "ds_builtin_adult", "target": "income"},
            "model": {"hidden_sizes": [64, 32]},
            "training": {"epochs": 2, "batch_size": 256},
            "search": {"num_trials": 1},
            "audit": {"sensitive_features": ["sex"], "bootstrap": {"resamples": 20}},
            "promotion": {"compress": "dynamic_int8", "prune": 0.3},
        }
    )
    final = c.wait(job["id"], timeout=300, poll=0.5)
    assert final["status"] == "succeeded", final["error"]
    evaluation = c.evaluation(job["id"])
    audit = c.audit(job["id"])
    r = evaluation["compression"]

    # The report's figures agree with each other and with the best model's own documents.
    assert r["method"] == "l1_prune+dynamic_int8" and r["prune"] == 0.3
    assert 0 < r["size_bytes"] < r["original_size_bytes"]
    assert r["size_ratio"] == pytest.approx(r["size_bytes"] / r["original_size_bytes"])
    assert r["size_ratio"] < 1
    assert r["deflated_size_bytes"] < r["original_deflated_size_bytes"]
    assert r["sparsity"] == pytest.approx(0.3, abs=0.005) and r["original_sparsity"] < 0.01
    assert r["latency_ms_p50"] > 0 and r["original_latency_ms_p50"] > 0
    assert r["original_metrics"]["accuracy"] == evaluation["accuracy"]
    assert r["metrics"]["accuracy"] == r["evaluation"]["accuracy"]
    assert r["evaluation"]["num_rows"] == evaluation["num_rows"]  # the same test rows
    assert abs(r["metrics"]["accuracy"] - evaluation["accuracy"]) < 0.05
    assert r["prediction_agreement"] >= 0.9
    # The audit was run again on the variant's own predictions.
    assert r["original_audit_passed"] == audit["passed"]
    assert r["audit_passed"] == r["audit"]["passed"]
    assert r["audit"]["num_rows"] == audit["num_rows"]
    assert {x["metric"] for x in r["audit"]["checks"]} == {x["metric"] for x in audit["checks"]}

    html = httpx.get(
        f"{stack.url}/v1/jobs/{job['id']}/audit.html",
        headers={"Authorization": f"Bearer {stack.token}"},
    ).text
    assert "Compressed candidate" in html
    assert f"{r['metrics']['accuracy']:.3f}" in html and f"{evaluation['accuracy']:.3f}" in html

    # No candidate named: the compressed variant is the one served.
    promo = c.promote(job["id"], "adult-int8")
    assert promo["candidate"] == "compressed"
    model = c.model(promo["model_id"])
    assert model["candidate"] == "compressed"
    assert model["lineage"]["bundle_digest"] == r["bundle"]["digest"]
    assert model["metrics"]["compression"]["size_ratio"] == r["size_ratio"]

    bundle = load_bundle(r["bundle"]["uri"], r["bundle"]["digest"])
    assert any("quantized" in type(m).__module__ for m in bundle.model.modules())
    rows = bundle.manifest["sample_rows"]
    served = c.predict(promo["url"], rows)
    offline = bundle.predict(rows)
    assert served["predictions"] == offline["predictions"]
    got = [[p[k] for k in sorted(p)] for p in served["probabilities"]]
    want = [[p[k] for k in sorted(p)] for p in offline["probabilities"]]
    assert np.allclose(got, want, rtol=0, atol=1e-6)
    assert served["model_id"] == promo["model_id"]

    # The CLI names the original explicitly; it is a different model version.
    out = run_cli(stack, "promote", job["id"], "adult-float", "--candidate", "best", "--json")
    assert out.returncode == 0, out.stderr
    assert '"candidate": "best"' in out.stdout
    assert promo["model_id"] not in out.stdout
