"""Batch scoring (jobs/score.py) on a real local Ray: every row scored as the endpoint would."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from jobs.bundle import OutputHead, load_bundle, save_bundle
from jobs.data import DataError, file_sha256
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.score import ScoringManifest, main, score
from jobs.spec import MLPSpec

N = 500


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    if ray.is_initialized():  # another module's cluster: share it, leave it to its owner
        yield
        return
    # "local": a new cluster of our own, never one another process left running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def table(n: int = N, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x_list: list[float | None] = [float(v) for v in x]
    for i in range(0, n, 17):
        x_list[i] = None  # imputed like in training
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "x": pa.array(x_list, pa.float64()),
            "k": pa.array(rng.integers(0, 100, n), pa.int64()),
            "flag": pa.array(rng.integers(0, 2, n).astype(bool)),
            "c": rng.choice(["a", "b", "c"], n).tolist(),
            "y": rng.integers(0, 2, n).tolist(),
        }
    )


def bundle(folder: Path, task: str = "classification") -> tuple[Path, str]:
    t = table(200, seed=1)
    cols = {
        "x": np.nan_to_num(t.column("x").to_numpy(zero_copy_only=False)),
        "k": t.column("k").to_numpy().astype(np.float64),
        "flag": t.column("flag").to_numpy(zero_copy_only=False).astype(np.float64),
        "c": np.array(t.column("c").to_pylist(), dtype=object),
    }
    pre = Preprocessor.fit(
        cols, {"x": "numeric", "k": "numeric", "flag": "numeric", "c": "categorical"}
    )
    spec = MLPSpec(hidden_sizes=[8])
    torch.manual_seed(0)
    if task == "regression":
        head = OutputHead("regression", [], center=3.0, scale=2.0)
    else:
        head = OutputHead("classification", [0, 1, 2])
    model = build_model(spec, pre.example_shape, head.n_outputs(pre))
    rows = [{"x": 0.5, "k": 3, "flag": 1.0, "c": "a"}]
    digest = save_bundle(folder, model.state_dict(), spec, pre, head, rows, {"job_id": "job_t"})
    return folder, digest


def manifest(tmp_path: Path, data: Path, b: tuple[Path, str], **kw: Any) -> ScoringManifest:
    m = ScoringManifest(
        run_id="scr_test",
        model_id="mdl_test",
        bundle_uri=str(b[0]),
        bundle_digest=b[1],
        dataset_id="ds_test",
        dataset_uri=str(data),
        dataset_sha256=file_sha256(data),
        folder=tmp_path / "scoring" / "scr_test",
        **kw,
    )
    m.write()
    return m


def dataset(tmp_path: Path, n: int = N) -> Path:
    path = tmp_path / "data.parquet"
    # Small row groups: several read blocks, so batch order across actors matters.
    pq.write_table(table(n), path, row_group_size=64)
    return path


def online(folder: Path, digest: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the endpoint answers for each row sent on its own (JSON in, JSON out)."""
    predictor = load_bundle(folder, digest)
    out = []
    for rec in records:
        wire = json.loads(json.dumps({k: rec[k] for k in ("x", "k", "flag", "c")}))
        wire["flag"] = float(wire["flag"])  # a JSON client sends the numeric input as a number
        answer = json.loads(json.dumps(predictor.predict([wire])))
        out.append({k: v[0] for k, v in answer.items()})
    return out


def test_every_row_scores_as_the_endpoint_answers_it(ray_cluster: None, tmp_path: Path) -> None:
    data = dataset(tmp_path)
    b = bundle(tmp_path / "bundle")
    m = manifest(tmp_path, data, b, concurrency=2, batch_size=50, passthrough=["id", "y"])
    progress: list[tuple[int, int]] = []
    assert score(m, lambda done, total: progress.append((done, total))) == N

    result = pq.read_table(m.output)
    assert result.schema.names == ["row", "id", "y", "prediction", "probabilities"]
    got = result.to_pylist()
    source = pq.read_table(data).to_pylist()
    assert [r["row"] for r in got] == list(range(N))
    # The carried columns tie each result to its input row.
    assert [(r["id"], r["y"]) for r in got] == [(s["id"], s["y"]) for s in source]
    expected = online(*b, source)
    assert [r["prediction"] for r in got] == [e["predictions"] for e in expected]
    for r, e in zip(got, expected, strict=True):
        assert r["probabilities"].keys() == e["probabilities"].keys() == {"0", "1", "2"}
        for c, p in e["probabilities"].items():
            assert abs(r["probabilities"][c] - p) <= 1e-6
    # The model is not constant on these rows: equality above says something.
    assert len({r["prediction"] for r in got}) > 1
    assert progress[0] == (0, N)
    assert not list(m.folder.glob("*.tmp"))


def test_regression_results_are_values_in_the_targets_units(
    ray_cluster: None, tmp_path: Path
) -> None:
    data = dataset(tmp_path, 120)
    b = bundle(tmp_path / "bundle", task="regression")
    m = manifest(tmp_path, data, b, concurrency=1, batch_size=32)
    assert score(m) == 120
    result = pq.read_table(m.output)
    assert result.schema.names == ["row", "prediction"]
    assert result.schema.field("prediction").type == pa.float64()
    expected = online(*b, pq.read_table(data).to_pylist())
    assert np.allclose(
        result.column("prediction").to_numpy(), [e["predictions"] for e in expected], atol=1e-9
    )


def test_a_dataset_that_changed_is_not_scored(ray_cluster: None, tmp_path: Path) -> None:
    data = dataset(tmp_path, 50)
    m = manifest(tmp_path, data, bundle(tmp_path / "bundle"))
    pq.write_table(table(50, seed=9), data)
    with pytest.raises(DataError, match="changed after it was registered"):
        score(m)
    assert not m.output.exists()


def test_missing_inputs_and_clashing_passthrough_columns_are_refused(
    ray_cluster: None, tmp_path: Path
) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(table(30).drop_columns(["c"]), path)
    b = bundle(tmp_path / "bundle")
    with pytest.raises(DataError, match="no column 'c'"):
        score(manifest(tmp_path, path, b))
    data = dataset(tmp_path, 30)
    with pytest.raises(DataError, match="no column 'nope'"):
        score(manifest(tmp_path, data, b, passthrough=["nope"]))


class ReportCollector:
    """Stands in for the control plane's scoring report route."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                collector.paths.append(self.path)
                collector.reports.append(
                    json.loads(self.rfile.read(int(self.headers["content-length"])))
                )
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ReportCollector]:
    c = ReportCollector()
    monkeypatch.setenv("CRUCIBLE_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("CRUCIBLE_API_URL", c.url)
    monkeypatch.setenv("CRUCIBLE_JOB_TOKEN", "t0ken")
    yield c
    c.server.shutdown()


def test_the_driver_reports_progress_and_the_outcome(
    ray_cluster: None, tmp_path: Path, collector: ReportCollector
) -> None:
    data = dataset(tmp_path, 80)
    m = manifest(tmp_path, data, bundle(tmp_path / "bundle"))
    assert main([m.run_id]) == 0
    assert set(collector.paths) == {"/v1/internal/scoring/scr_test/report"}
    assert collector.reports[-1] == {
        "status": "succeeded",
        "rows_done": 80,
        "rows_total": 80,
        "error": None,
    }
    assert json.loads((m.folder / "result.json").read_text()) == {"rows": 80}


def test_the_driver_reports_a_failure_with_its_reason(
    ray_cluster: None, tmp_path: Path, collector: ReportCollector
) -> None:
    data = dataset(tmp_path, 20)
    folder, _ = bundle(tmp_path / "bundle")
    m = manifest(tmp_path, data, (folder, "0" * 64))
    assert main([m.run_id]) == 1
    last = collector.reports[-1]
    assert last["status"] == "failed" and "digest on record" in last["error"]
    assert not m.output.exists() and not (m.folder / "result.json").exists()
