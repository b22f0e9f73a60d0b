"""The web UI in real headless Chromium against a running stack.

A user signs in with a token, follows a job from the list while it runs (the page must
refresh itself to see it finish), and looks at what a finished job shows: learning curves,
the confusion matrix and the audit report; then the endpoint it was promoted to. Any console
error fails the test, so a CSP violation or a failed request cannot pass unnoticed.
Screenshots are kept in test-artifacts/ at the repository root.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from jobs.datasets import BUILTIN

from .conftest import Stack

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts"
ENDPOINT = "ui-e2e"
SPEC: dict[str, Any] = {
    "name": "ui",
    "dataset": {"id": "ds_builtin_adult", "target": "income"},
    "model": {"hidden_sizes": [8]},
    "training": {"epochs": 2, "batch_size": 512},
    # A grid of two, so the two trials differ: without a space the search has one config.
    "search": {
        "num_trials": 2,
        "algorithm": "grid",
        "space": {"training.learning_rate": {"choice": [0.03, 0.001]}},
    },
    "audit": {"sensitive_features": ["sex"]},
}


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is needed for the web UI test (scripts/test.sh installs it)")
        pytest.skip("no Chromium on this machine")
    return path


@pytest.fixture
def page(stack: Stack) -> Iterator[tuple[Any, list[str]]]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        # Debian's Chromium, not Playwright's download: the test machines cannot fetch one.
        browser = pw.chromium.launch(
            executable_path=chromium_or_skip(),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            console: list[str] = []
            pg.on(
                "console",
                lambda m: console.append(f"{m.text} @ {m.location}") if m.type == "error" else None,
            )
            pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            # The UI must not reach beyond the API's origin (no CDN, no fonts).
            outside: list[str] = []

            def only_the_stack(route: Any) -> None:
                url = route.request.url
                if url.startswith(stack.url) or url.startswith(("blob:", "data:")):
                    route.continue_()
                else:
                    outside.append(url)
                    route.abort()

            pg.route("**/*", only_the_stack)
            yield pg, console
            assert not outside, outside
        finally:
            browser.close()


def shoot(pg: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"web-ui-{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_static_files_are_public_and_locked_down(stack: Stack) -> None:
    r = httpx.get(f"{stack.url}/ui", follow_redirects=True)
    assert r.status_code == 200
    assert str(r.url).endswith("/ui/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-eval" not in csp
    assert '<script src="static/app.js"' in r.text
    for name, kind in (("app.js", "javascript"), ("app.css", "css")):
        asset = httpx.get(f"{stack.url}/ui/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    # Only the listed files: nothing else in the package directory is reachable.
    assert httpx.get(f"{stack.url}/ui/static/__init__.py").status_code == 404
    assert httpx.get(f"{stack.url}/ui/static/..%2Findex.html").status_code == 404
    # The data stays behind the token.
    assert httpx.get(f"{stack.url}/v1/jobs").status_code == 401


def test_web_ui(stack: Stack, page: tuple[Any, list[str]]) -> None:
    pg, console = page
    job_id = stack.client.submit_job(SPEC)["id"]

    pg.goto(f"{stack.url}/ui")
    pg.wait_for_selector("form#login")
    # A wrong token is refused on the login form, and nothing is kept.
    pg.fill("#token", "not-a-token")
    pg.click("form#login button[type=submit]")
    pg.wait_for_selector("form#login .error:not(:empty)")
    assert pg.evaluate("sessionStorage.getItem('crucible.token')") is None
    # That refusal is a 401 the browser logs; it is expected, the rest must be clean.
    console.clear()
    shoot(pg, "login")

    pg.fill("#token", stack.token)
    pg.click("form#login button[type=submit]")
    pg.wait_for_selector(f"#jobs tr[data-job='{job_id}']")
    assert pg.evaluate("sessionStorage.getItem('crucible.token')") == stack.token
    shoot(pg, "jobs")

    pg.click(f"#jobs tr[data-job='{job_id}'] a")
    pg.wait_for_selector("#leaderboard tbody tr", timeout=240_000)
    shoot(pg, "job-live")
    # No reload from here: the page has to notice the end by itself.
    pg.wait_for_selector("h1 .badge.s-succeeded", timeout=600_000)
    assert stack.client.job(job_id)["status"] == "succeeded"

    pg.wait_for_selector("#curves path.series")
    trials = stack.client.trials(job_id)
    assert pg.locator("#curves path.series").count() == len(trials) == 2
    assert pg.locator("#leaderboard tbody tr").count() == 2
    for d in pg.eval_on_selector_all(
        "#curves path.series", "ps => ps.map(p => p.getAttribute('d'))"
    ):
        assert d.startswith("M") and "L" in d  # two epochs: a line, not a dot

    pg.wait_for_selector("#confusion-matrix rect.cell")
    evaluation = stack.client.evaluation(job_id)
    cm = evaluation["confusion_matrix"]
    assert pg.locator("#confusion-matrix rect.cell").count() == len(cm) ** 2
    counts = pg.eval_on_selector_all(
        "#confusion-matrix text.count", "ts => ts.map(t => Number(t.textContent))"
    )
    assert counts == [v for row in cm for v in row]
    assert pg.locator("#evaluation").inner_text().count("\n") >= 3

    pg.wait_for_selector("#audit-frame")
    report = pg.frame_locator("#audit-frame")
    report.locator("h1").wait_for()
    assert "audit" in report.locator("h1").inner_text().lower()
    assert report.locator("svg").count() > 0
    shoot(pg, "job")
    frame = pg.locator("#audit-frame")
    frame.scroll_into_view_if_needed()
    # The report frame on its own: a sandboxed frame is painted apart from the page.
    frame.screenshot(path=str(ARTIFACTS / "web-ui-audit.png"))
    print(f"screenshot: {ARTIFACTS / 'web-ui-audit.png'}")

    promoted = stack.client.promote(job_id, ENDPOINT)
    # Some traffic, so the endpoint page has monitoring figures to draw.
    rows = pq.read_table(BUILTIN["adult"].path).slice(0, 40).drop(["income"]).to_pylist()
    headers = {"Authorization": f"Bearer {stack.token}"}
    for start in range(0, 40, 10):
        batch = {"instances": rows[start : start + 10]}
        r = httpx.post(promoted["url"], json=batch, headers=headers)
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while stack.client.monitoring(ENDPOINT)["logged"] < 40:
        assert time.monotonic() < deadline, "the prediction logs did not arrive"
        time.sleep(0.5)
    pg.click("nav a[href='#/endpoints']")
    pg.wait_for_selector(f"#endpoints a[href='#/endpoints/{ENDPOINT}']")
    shoot(pg, "endpoints")
    pg.click(f"#endpoints a[href='#/endpoints/{ENDPOINT}']")
    pg.wait_for_selector("#versions tbody tr")
    versions = pg.locator("#versions tbody").inner_text()
    assert promoted["model_id"] in versions
    assert job_id in versions  # lineage: the version links back to its job
    assert "test accuracy" in versions
    monitoring = pg.locator("#monitoring tbody").inner_text()
    assert promoted["model_id"] in monitoring and "40" in monitoring
    assert pg.locator("#alert").inner_text() == "no alert"
    # One PSI bar per profiled input the requests carried, against the threshold line.
    assert pg.locator("svg.psi rect").count() >= 10
    shoot(pg, "endpoint")

    # Signing out forgets the token.
    pg.click("#logout")
    pg.wait_for_selector("form#login")
    assert pg.evaluate("sessionStorage.getItem('crucible.token')") is None

    assert console == [], console
