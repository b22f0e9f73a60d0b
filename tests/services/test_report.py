"""Audit reports: the HTML page is looked at in real headless Chromium, and printed to PDF.

The browser checks need Debian's ``chromium`` (scripts/test.sh installs it) and Playwright
(a dev dependency, driving that Chromium: Playwright's own browser download is not used).
Screenshots are kept in test-artifacts/ at the repository root.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.audit import run_audit
from jobs.events import Event
from jobs.spec import AuditOptions
from services.client import Crucible
from services.core.auth import job_token
from services.core.datasets import builtin_id
from services.core.report import find_browser
from tests.services.conftest import TOKEN, Client
from tests.services.test_audits import body, predictions

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
SEP = " \u00d7 "


def browser_or_skip() -> str:
    browser = find_browser()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is needed for the report tests (scripts/test.sh installs it)")
        pytest.skip("no Chromium on this machine")
    return browser


def synthetic_audit() -> dict[str, Any]:
    """An audit like the Adult one: a model that favours one sex, some rows without a sex."""
    rng = np.random.default_rng(11)
    n = 2000
    sex = rng.choice(["Female", "Male"], n, p=[0.33, 0.67]).astype(object)
    race = rng.choice(
        ["White", "Black", "Asian-Pac-Islander", "<script>alert(1)</script>"],
        n,
        p=[0.8, 0.12, 0.06, 0.02],
    ).astype(object)
    sex[:25] = None
    t = (rng.random(n) < np.where(sex == "Male", 0.3, 0.12)).astype(int)
    p = np.where(rng.random(n) < 0.85, t, 1 - t)
    options = AuditOptions(
        sensitive_features=["sex", "race"],
        gate=[{"metric": "equalized_odds_difference", "threshold": 0.2}],
    )
    return run_audit(t, p, {"sex": sex, "race": race}, options, positive_label=">50K")


def succeeded_job(
    client: Client,
    audit: dict[str, Any],
    intended_use: str | None = "Screening demo. Not for decisions about people.",
) -> str:
    spec = {
        "name": "report-job",
        "dataset": {"id": builtin_id("adult"), "target": "income"},
        "audit": {"sensitive_features": ["sex", "race"], "intended_use": intended_use},
    }
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job_id = str(r.json()["id"])
    result = {
        "best_trial": {"trial_id": "t1", "config": {}, "metrics": {"val_accuracy": 0.84}},
        "evaluation": {"accuracy": 0.85, "precision": 0.7, "recall": 0.6, "f1_macro": 0.77},
        "audit": audit,
        "bundle": {"uri": "/nowhere", "digest": "ab" * 32},
    }
    token = job_token(client.settings.resolved_secret_key, job_id)
    r = client.c.post(
        f"/v1/internal/jobs/{job_id}/events",
        json={
            "events": [
                Event(key="job.running", type="job.running").model_dump(mode="json"),
                Event(key="job.succeeded", type="job.succeeded", data=result).model_dump(
                    mode="json"
                ),
            ]
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return job_id


def look_at(page_html: str, tmp_path: Path, name: str) -> dict[str, Any]:
    """Open the page in headless Chromium with the network cut off; screenshot it."""
    browser_path = browser_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api")
    page_file = tmp_path / f"{name}.html"
    page_file.write_text(page_html, encoding="utf-8")
    shot = tmp_path / f"{name}.png"
    console: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))

            def only_the_file(route: Any) -> None:
                requests.append(route.request.url)
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", only_the_file)
            page.goto(page_file.as_uri(), wait_until="load")
            seen = page.evaluate(
                """() => {
                  const svgs = [...document.querySelectorAll('svg')];
                  return {
                    title: document.title,
                    svgs: svgs.length,
                    drawn: svgs.filter(s => {
                      const r = s.getBoundingClientRect();
                      const shapes = s.querySelectorAll('rect,circle,line,path').length;
                      return r.width > 50 && r.height > 30 && shapes > 0;
                    }).length,
                    labels: svgs.map(s => s.getAttribute('aria-label')),
                    bars: document.querySelectorAll('svg rect').length,
                    text: document.body.innerText,
                  };
                }"""
            )
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    assert shot.stat().st_size > 20_000
    seen["console"] = console
    seen["requests"] = requests
    return seen


def assert_self_contained(page: str) -> None:
    # Nothing that makes a browser fetch: no scripts, links, images, frames or CSS URLs.
    # (URLs in text, like a dataset's licence, are only text.)
    for needle in ("<script", "<link", "<img", "<iframe", "<object", "url(", "@import"):
        assert needle not in page, needle
    assert not re.search(r"\s(src|href|xlink:href)\s*=", page)


def test_job_report_renders_in_a_browser(client: Client, tmp_path: Path) -> None:
    audit = synthetic_audit()
    job_id = succeeded_job(client, audit)
    r = client.get(f"/v1/jobs/{job_id}/audit.html")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert_self_contained(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # group names are escaped

    seen = look_at(page, tmp_path, "audit-report-job")
    assert seen["console"] == [], seen["console"]
    assert all(u.startswith("file://") for u in seen["requests"]), seen["requests"]
    assert seen["title"] == "Fairness audit of job report-job"
    # Per section: five rate panels; then one confusion matrix per group; one checks plot.
    sections = audit["features"].values()
    expected = 1 + sum(5 + len(s["groups"]) for s in sections)
    assert seen["svgs"] == expected and seen["drawn"] == expected
    labels = seen["labels"]
    assert "disparities against their limits" in labels
    assert "Selection rate by sex" in labels and f"Selection rate by sex{SEP}race" in labels
    assert "confusion matrix of Female" in labels and "confusion matrix of unknown" in labels
    text = seen["text"]
    assert ("PASSED" if audit["passed"] else "FAILED") in text
    for words in (
        "Summary",
        "Model card",
        "Intended use",
        "Screening demo. Not for decisions about people.",
        "Caveats",
        "Lineage",
        job_id,
        "ab" * 32,  # the bundle digest
        "not promoted",
        "rows have no value for sex",
        "four-fifths",
    ):
        assert words in text, words
    # The numbers on the page are the JSON's.
    check = audit["checks"][0]
    assert check["reason"] in text

    # The SDK (behind `crucible jobs report`) saves the same page.
    sdk = Crucible("http://testserver", TOKEN)
    sdk.http = client.c
    client.c.headers.update(client.h)
    assert sdk.audit_report(job_id).decode() == page


def test_predictions_report_and_pdf(client: Client, tmp_path: Path) -> None:
    ds = client.upload("preds", predictions())
    r = client.post(
        "/v1/audits",
        json=body(ds, name="vendor", intended_use="Credit pre-screen by a vendor model."),
    )
    assert r.status_code == 201, r.text
    audit_id = r.json()["id"]
    r = client.get(f"/v1/audits/{audit_id}.html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert_self_contained(r.text)
    seen = look_at(r.text, tmp_path, "audit-report-predictions")
    assert seen["console"] == [] and seen["drawn"] == seen["svgs"] > 10
    assert "Credit pre-screen by a vendor model." in seen["text"]
    assert "Crucible did not train this model" in seen["text"]

    pdf = client.get(f"/v1/audits/{audit_id}.html", params={"format": "pdf"})
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF") and len(pdf.content) > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "audit-report-predictions.pdf").write_bytes(pdf.content)


def test_pdf_without_chromium_says_how(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRUCIBLE_CHROMIUM", "/nonexistent/chromium")
    job_id = succeeded_job(client, synthetic_audit(), intended_use=None)
    r = client.get(f"/v1/jobs/{job_id}/audit.html", params={"format": "pdf"})
    assert r.status_code == 503
    assert "--print-to-pdf" in r.json()["detail"]
    page = client.get(f"/v1/jobs/{job_id}/audit.html").text
    assert "Not stated" in page  # no intended use in the spec: the card says so


def test_reports_need_a_current_audit(client: Client) -> None:
    assert client.get("/v1/jobs/job_nope/audit.html").status_code == 404
    assert client.get("/v1/audits/aud_nope.html").status_code == 404
    queued = client.post(
        "/v1/jobs", json={"name": "q", "dataset": {"id": builtin_id("adult"), "target": "income"}}
    ).json()["id"]
    assert client.get(f"/v1/jobs/{queued}/audit.html").status_code == 409
    old = succeeded_job(client, {"passed": False, "features": {}, "checks": []})
    r = client.get(f"/v1/jobs/{old}/audit.html")
    assert r.status_code == 409 and "before reports existed" in r.json()["detail"]
    assert client.get(f"/v1/jobs/{old}/audit").status_code == 200  # the JSON stays readable
    regression = succeeded_job(client, {"task": "regression", "passed": None, "checks": []})
    r = client.get(f"/v1/jobs/{regression}/audit.html")
    assert r.status_code == 409 and "regression" in r.json()["detail"]
    assert client.get("/v1/jobs/job_nope/audit.html", params={"format": "docx"}).status_code in (
        404,
        422,
    )
