"""Issue 5's end to end claim on the built-in Adult data: a plain model fails the default
demographic parity check by sex, the ThresholdOptimizer candidate passes it, and the report
shows both with their accuracy; the mitigated bundle decides by the group it is given."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from jobs.bundle import load_bundle
from jobs.data import DataError

from .conftest import Stack

pytestmark = pytest.mark.e2e


def test_threshold_optimizer_candidate_passes_where_the_plain_model_fails(stack: Stack) -> None:
    c = stack.client
    job = c.submit_job(
        {
            "name": "mitigation",
            "dataset": {"id": "ds_builtin_adult", "target": "income"},
            "model": {"hidden_sizes": [32]},
            "training": {"epochs": 2, "batch_size": 256},
            "search": {"num_trials": 1},
            "audit": {
                "sensitive_features": ["sex"],
                "bootstrap": {"resamples": 50},
                "mitigation": {"constraint": "demographic_parity"},
            },
        }
    )
    final = c.wait(job["id"], timeout=300, poll=0.5)
    assert final["status"] == "succeeded", final["error"]
    audit = c.audit(job["id"])

    def dp_check(doc: dict[str, Any]) -> dict[str, Any]:
        return next(
            x
            for x in doc["checks"]
            if x["feature"] == "sex" and x["metric"] == "demographic_parity_ratio"
        )

    assert not audit["passed"] and not dp_check(audit)["passed"]
    m = audit["mitigation"]
    assert m["audit"]["passed"] and dp_check(m["audit"])["passed"]
    assert dp_check(m["audit"])["value"] >= 0.8 > dp_check(audit)["value"]
    plain_accuracy = c.evaluation(job["id"])["accuracy"]
    assert m["compared_with"]["accuracy"] == plain_accuracy
    # fairness costs some accuracy, not all of it
    assert 0.7 < m["evaluation"]["accuracy"] <= plain_accuracy + 0.01

    html = httpx.get(
        f"{stack.url}/v1/jobs/{job['id']}/audit.html",
        headers={"Authorization": f"Bearer {stack.token}"},
    ).text
    assert "Mitigated candidate" in html
    assert f"{plain_accuracy:.3f}" in html and f"{m['evaluation']['accuracy']:.3f}" in html

    bundle = load_bundle(m["bundle"]["uri"], m["bundle"]["digest"])
    rows = bundle.manifest["sample_rows"]
    assert all("sex" in r for r in rows)
    assert bundle.predict(rows) == bundle.predict(rows)  # seeded by the request
    with pytest.raises(DataError, match="missing column 'sex'"):
        bundle.predict([{k: v for k, v in rows[0].items() if k != "sex"}])
    with pytest.raises(DataError, match="not seen"):
        bundle.predict([dict(rows[0], sex="Martian")])


def test_the_mitigated_candidate_can_be_promoted_and_needs_the_group(stack: Stack) -> None:
    from services.client import CrucibleError

    c = stack.client
    plain = c.submit_job(
        {
            "name": "no-mitigation",
            "dataset": {"id": "ds_builtin_adult", "target": "income"},
            "model": {"hidden_sizes": [8]},
            "training": {"epochs": 1, "batch_size": 512},
            "search": {"num_trials": 1},
        }
    )
    job = next(j for j in c.jobs() if j["name"] == "mitigation" and j["status"] == "succeeded")
    promo = c.promote(job["id"], "fair-e2e", candidate="mitigated")
    model = c.model(promo["model_id"])
    assert model["candidate"] == "mitigated" and model["lineage"]["job_id"] == job["id"]
    best = c.promote(job["id"], "best-e2e")
    assert best["model_id"] != promo["model_id"]
    row = c.audit(job["id"])["mitigation"]
    bundle = load_bundle(row["bundle"]["uri"], row["bundle"]["digest"])
    rows = bundle.manifest["sample_rows"]
    assert c.predict(promo["url"], rows)["predictions"] == bundle.predict(rows)["predictions"]
    with pytest.raises(CrucibleError) as exc:
        c.predict(promo["url"], [{k: v for k, v in rows[0].items() if k != "sex"}])
    assert exc.value.status == 422 and "'sex'" in exc.value.detail
    assert c.wait(plain["id"], timeout=300, poll=0.5)["status"] == "succeeded"
    with pytest.raises(CrucibleError) as none:
        c.promote(plain["id"], "nope-e2e", candidate="mitigated")
    assert none.value.status == 409 and "no mitigated candidate" in none.value.detail
