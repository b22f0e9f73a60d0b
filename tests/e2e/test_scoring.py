"""Batch scoring on a real stack: a promoted endpoint's model scores a registered dataset as a
Ray job (Ray Data actors), and every output row equals what the endpoint answers for it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.datasets import BUILTIN

from .conftest import Stack
from .test_promotion import tiny_spec
from .test_stack import run_cli

pytestmark = pytest.mark.e2e

ROWS = 200


@pytest.fixture(scope="module")
def endpoint(stack: Stack) -> dict[str, Any]:
    """One small job, promoted: ``{endpoint, model_id, url}``."""
    c = stack.client
    job = c.submit_job(tiny_spec("batch-score", seed=11))
    assert c.wait(job["id"], timeout=600)["status"] == "succeeded", c.job(job["id"])["error"]
    return c.promote(job["id"], "batch-e2e")


@pytest.fixture(scope="module")
def to_score(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, str]:
    """200 Adult rows with a reference column, registered: (the table, its dataset id)."""
    table = pq.read_table(BUILTIN["adult"].path).slice(5000, ROWS)
    table = table.append_column("ref", [[f"person-{i}" for i in range(ROWS)]])
    path = tmp_path_factory.mktemp("scoring") / "to_score.parquet"
    pq.write_table(table, path)
    return table, stack.client.upload_dataset(path, "to-score")["id"]


def test_batch_scoring_equals_online_predictions(
    stack: Stack, endpoint: dict[str, Any], to_score: tuple[pa.Table, str], tmp_path: Path
) -> None:
    c = stack.client
    table, dataset_id = to_score
    run = c.score_endpoint(
        "batch-e2e", dataset_id, concurrency=2, batch_size=64, passthrough=["ref"]
    )
    assert run["status"] == "queued"
    seen: list[int] = []
    final = c.wait_scoring(
        run["id"], timeout=600, on_poll=lambda r: seen.append(r["progress"]["rows_done"])
    )
    assert final["status"] == "succeeded", final["error"]
    print(f"scored {ROWS} rows in {final['duration_s']:.1f} s (driver start to result)")
    assert final["model_id"] == endpoint["model_id"] and final["endpoint"] == "batch-e2e"
    assert final["progress"] == {"rows_done": ROWS, "rows_total": ROWS, "fraction": 1.0}
    assert seen == sorted(seen)  # progress only goes forward
    assert Path(final["output_uri"]).is_relative_to(stack.data_dir)

    out = c.scoring_result(run["id"], tmp_path / "result.parquet")
    result = pq.read_table(out).to_pylist()
    assert [r["row"] for r in result] == list(range(ROWS))
    assert [r["ref"] for r in result] == [f"person-{i}" for i in range(ROWS)]

    # The same rows, as a client sends them to the endpoint.
    instances = table.drop(["income", "ref"]).to_pylist()
    r = httpx.post(
        endpoint["url"],
        json={"instances": instances},
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    online = r.json()
    assert online["model_id"] == endpoint["model_id"]
    assert [row["prediction"] for row in result] == online["predictions"]
    for row, probs in zip(result, online["probabilities"], strict=True):
        assert row["probabilities"].keys() == probs.keys()
        for label, p in probs.items():
            assert abs(row["probabilities"][label] - p) <= 1e-6, (row, probs)
    # Both classes occur: agreement on a constant model would say little.
    assert len(set(online["predictions"])) == 2

    page = c.scoring_rows(run["id"], offset=ROWS - 2, limit=10)
    assert page["total"] == ROWS and [x["row"] for x in page["items"]] == [ROWS - 2, ROWS - 1]
    assert any(r["id"] == run["id"] for r in c.scoring_runs())


def test_a_scoring_run_whose_ray_job_is_stopped_ends_failed(
    stack: Stack, endpoint: dict[str, Any]
) -> None:
    """The driver never reports: the reconciler settles the run from what Ray says."""
    c = stack.client
    run = c.score_model(endpoint["model_id"], "ds_builtin_adult", concurrency=1)
    ray = httpx.Client(
        base_url=stack.dashboard_url, headers={"Authorization": f"Bearer {stack.ray_token}"}
    )
    deadline = time.monotonic() + 60
    while ray.get(f"/api/jobs/{run['id']}").status_code != 200:
        assert time.monotonic() < deadline, "the run was never launched"
        time.sleep(0.2)
    assert ray.post(f"/api/jobs/{run['id']}/stop").status_code == 200
    final = c.wait_scoring(run["id"], timeout=120, poll=0.5)
    assert final["status"] == "failed" and final["error"]
    assert final["progress"]["rows_done"] < final["progress"]["rows_total"]


def test_cli_score_follow_saves_the_result(
    stack: Stack, endpoint: dict[str, Any], to_score: tuple[pa.Table, str], tmp_path: Path
) -> None:
    out = tmp_path / "cli.parquet"
    done = run_cli(
        stack, "score", "batch-e2e", to_score[1], "--follow", "-o", str(out), timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout and f"{ROWS}/{ROWS} rows" in done.stdout
    assert pq.read_table(out).column("row").to_pylist() == list(range(ROWS))
