"""``python -m jobs.score <run id>``: batch scoring, the Ray job behind a scoring run.

The control plane submits this fixed command through Ray's Jobs API; what to score comes from
the run's manifest in artifact storage (``<artifacts>/scoring/<id>/manifest.json``, written by
the API), never from the command line. The driver checks that the dataset still hashes to what
was registered, reads it with Ray Data, predicts every batch on a pool of actors that each load
the model bundle once, and writes one Parquet file of results beside the manifest.

Every batch is predicted by :meth:`jobs.bundle.Predictor.predict`, the very call the serving
replica makes for a request, on the rows as a JSON client would send them, so a row scores here
exactly as it would online.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.bundle import Predictor, load_bundle
from jobs.data import DataError, stream_sha256
from jobs.datasets import resolve_uri
from jobs.events import ReportSender, ScoringReport

log = logging.getLogger("jobs.score")

RESULT = "result.parquet"
ROW = "row"
PREDICTION = "prediction"
PROBABILITIES = "probabilities"
ANOMALY_SCORE = "anomaly_score"
# Output columns a carried input column must not shadow.
RESERVED = frozenset({ROW, PREDICTION, PROBABILITIES, ANOMALY_SCORE})
DEFAULT_CONCURRENCY = 2
DEFAULT_BATCH_SIZE = 1024
# How often the driver tells the control plane how far it got.
PROGRESS_EVERY_S = 1.0


def scoring_dir(artifact_root: str | Path, run_id: str) -> Path:
    return Path(artifact_root) / "scoring" / run_id


@dataclass(frozen=True)
class ScoringManifest:
    run_id: str
    model_id: str
    bundle_uri: str
    bundle_digest: str
    dataset_id: str
    dataset_uri: str
    dataset_sha256: str
    folder: Path
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_BATCH_SIZE
    passthrough: list[str] = field(default_factory=list)

    @property
    def output(self) -> Path:
        return self.output_of(self.folder)

    @staticmethod
    def output_of(folder: Path) -> Path:
        return folder / RESULT

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model": {"id": self.model_id, "uri": self.bundle_uri, "digest": self.bundle_digest},
            "dataset": {
                "id": self.dataset_id,
                "uri": self.dataset_uri,
                "sha256": self.dataset_sha256,
            },
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "passthrough": self.passthrough,
        }

    def write(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "manifest.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)  # a driver never reads a half-written manifest
        return path

    @classmethod
    def load(cls, artifact_root: str | Path, run_id: str) -> ScoringManifest:
        folder = scoring_dir(artifact_root, run_id)
        raw = json.loads((folder / "manifest.json").read_text())
        if raw["run_id"] != run_id:
            raise DataError(f"the manifest in {folder} belongs to run {raw['run_id']}")
        return cls(
            run_id=run_id,
            model_id=raw["model"]["id"],
            bundle_uri=raw["model"]["uri"],
            bundle_digest=raw["model"]["digest"],
            dataset_id=raw["dataset"]["id"],
            dataset_uri=raw["dataset"]["uri"],
            dataset_sha256=raw["dataset"]["sha256"],
            folder=folder,
            concurrency=int(raw["concurrency"]),
            batch_size=int(raw["batch_size"]),
            passthrough=list(raw["passthrough"]),
        )


def verified_location(uri: str, sha256: str) -> tuple[pafs.FileSystem, str]:
    """The dataset's file system and path, once its bytes still hash to the digest on record:
    a run scores the rows that were registered, or none."""
    path = resolve_uri(uri)
    fs, inner = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
    with fs.open_input_stream(inner) as f:
        now = stream_sha256(f)
    if now != sha256:
        raise DataError(
            f"the dataset changed after it was registered (sha256 {sha256}, now {now}); "
            "register it again to score the new content"
        )
    return fs, inner


def output_schema(predictor: Predictor, passthrough: pa.Schema) -> pa.Schema:
    """Columns of the result, fixed before any batch runs so every batch writes the same."""
    fields = [pa.field(ROW, pa.int64())]
    fields += list(passthrough)
    classes = predictor.classes
    if predictor.head.task == "regression":
        fields.append(pa.field(PREDICTION, pa.float64()))
    else:
        fields.append(pa.field(PREDICTION, pa.array(classes).type))
    if predictor.head.task == "classification":
        fields.append(pa.field(PROBABILITIES, pa.struct([(str(c), pa.float64()) for c in classes])))
    elif predictor.head.task == "anomaly_detection":
        fields.append(pa.field(ANOMALY_SCORE, pa.float64()))
    return pa.schema(fields)


def as_instances(batch: pa.Table, predictor: Predictor) -> list[dict[str, Any]]:
    """The batch's rows as a JSON client sends them to the endpoint: plain Python values, nulls
    as None, arrays as nested lists."""
    numeric = {
        c["name"] for c in predictor.preprocessor.input_signature() if c["kind"] == "numeric"
    }
    inputs = [c["name"] for c in predictor.manifest["input_signature"]]
    columns = {}
    for name in inputs:
        col = batch.column(name)
        if name in numeric and (pa.types.is_boolean(col.type) or pa.types.is_decimal(col.type)):
            # Training read these as numbers (jobs.data casts numeric columns to float64); a
            # JSON client sends them as numbers too.
            col = pc.cast(col, pa.float64())
        columns[name] = col
    return pa.table(columns).to_pylist()


class BatchScorer:
    """The Ray Data UDF: one per actor, so each actor loads (and digest-checks) the bundle
    once and predicts every batch it is handed."""

    def __init__(self, bundle_uri: str, bundle_digest: str, passthrough: list[str]) -> None:
        self.predictor = load_bundle(bundle_uri, bundle_digest)
        self.passthrough = passthrough

    def __call__(self, batch: pa.Table) -> pa.Table:
        return predict_table(self.predictor, batch, self.passthrough)


def predict_table(predictor: Predictor, batch: pa.Table, passthrough: list[str]) -> pa.Table:
    """Predictions for one batch (the row index is added by the driver, which sees batches in
    order), with the carried input columns in front."""
    out = predictor.predict(as_instances(batch, predictor))
    schema = output_schema(predictor, batch.select(passthrough).schema)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: batch.column(name) for name in passthrough
    }
    columns[PREDICTION] = pa.array(out["predictions"], schema.field(PREDICTION).type)
    if PROBABILITIES in schema.names:
        columns[PROBABILITIES] = pa.array(out["probabilities"], schema.field(PROBABILITIES).type)
    if ANOMALY_SCORE in schema.names:
        columns[ANOMALY_SCORE] = pa.array(out["anomaly_scores"], pa.float64())
    return pa.table(columns)


def check_columns(schema: pa.Schema, predictor: Predictor, passthrough: list[str]) -> None:
    names = set(schema.names)
    for col in predictor.manifest["input_signature"]:
        if col["name"] not in names:
            raise DataError(f"the dataset has no column '{col['name']}', an input of the model")
    for name in passthrough:
        if name not in names:
            raise DataError(f"passthrough: the dataset has no column '{name}'")
        if name in RESERVED:
            raise DataError(
                f"passthrough: '{name}' is a column of the result; it cannot be carried"
            )


def score(
    manifest: ScoringManifest,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """Score every row of the manifest's dataset into ``manifest.output``; return the count.

    Needs a connected Ray (``ray.init``). The file appears whole or not at all.
    """
    import ray

    fs, path = verified_location(manifest.dataset_uri, manifest.dataset_sha256)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    schema, total = meta.schema.to_arrow_schema(), meta.num_rows
    predictor = load_bundle(manifest.bundle_uri, manifest.bundle_digest)
    passthrough = manifest.passthrough
    check_columns(schema, predictor, passthrough)
    inputs = [c["name"] for c in predictor.manifest["input_signature"]]
    read = list(dict.fromkeys([*inputs, *passthrough]))
    out_schema = output_schema(predictor, pa.schema([schema.field(n) for n in passthrough]))

    ctx = ray.data.DataContext.get_current()
    # Batches leave in the order the rows were read, so the driver can number them: "row" is
    # the position in the dataset, and joins results back to inputs.
    ctx.execution_options.preserve_order = True
    # One block per batch, up to a few per actor: the pool shares out blocks, not batches, so a
    # file read as one block would keep every actor but one idle.
    blocks = max(1, min(math.ceil(total / manifest.batch_size), 4 * manifest.concurrency))
    # Read and split finish before the actors start: each actor holds a CPU for the whole run,
    # so tasks streaming beside a pool as large as the cluster would never be scheduled
    # (measured: 2 actors on 2 CPUs, the file listing waits forever). Datasets are single
    # Parquet files the drivers read whole anyway; Ray spills blocks to disk if it must.
    ds = (
        ray.data.read_parquet(
            path,
            filesystem=fs,
            columns=read,
            # Dataset files are ours, whatever their name or folder: no extension filter, and
            # no hive partition columns taken from the path.
            file_extensions=None,
            partitioning=None,
        )
        .repartition(blocks)
        .materialize()
    )
    scored = ds.map_batches(
        BatchScorer,
        fn_constructor_args=(manifest.bundle_uri, manifest.bundle_digest, passthrough),
        batch_size=manifest.batch_size,
        batch_format="pyarrow",
        concurrency=manifest.concurrency,
        num_cpus=1,
    )
    manifest.folder.mkdir(parents=True, exist_ok=True)
    tmp = manifest.output.with_suffix(".tmp")
    done, reported = 0, time.monotonic()
    on_progress(0, total)
    with pq.ParquetWriter(tmp, out_schema) as writer:
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            assert isinstance(batch, pa.Table)  # batch_format="pyarrow"
            rows = pa.array(range(done, done + batch.num_rows), pa.int64())
            table = pa.table(
                {ROW: rows, **{n: batch.column(n) for n in out_schema.names[1:]}}
            ).cast(out_schema)
            writer.write_table(table)
            done += batch.num_rows
            if time.monotonic() - reported >= PROGRESS_EVERY_S:
                on_progress(done, total)
                reported = time.monotonic()
    if done != total:
        raise DataError(f"scored {done} rows of {total}")
    tmp.replace(manifest.output)
    return done


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if len(argv) != 1:
        print("usage: python -m jobs.score <run id>", file=sys.stderr)
        return 2
    run_id = argv[0]
    manifest = ScoringManifest.load(os.environ["CRUCIBLE_ARTIFACT_ROOT"], run_id)
    sender = ReportSender(os.environ["CRUCIBLE_API_URL"], run_id, os.environ["CRUCIBLE_JOB_TOKEN"])
    log.info(
        "scoring %s: model %s on dataset %s, %d actors, batches of %d",
        run_id,
        manifest.model_id,
        manifest.dataset_id,
        manifest.concurrency,
        manifest.batch_size,
    )

    def progress(done: int, total: int) -> None:
        sender.report(ScoringReport(status="running", rows_done=done, rows_total=total))

    try:
        import ray

        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        rows = score(manifest, progress)
    except Exception as exc:
        log.error("scoring failed:\n%s", traceback.format_exc())
        error = str(exc) if isinstance(exc, DataError | ValueError) else repr(exc)
        sender.report(ScoringReport(status="failed", error=error[:20_000]))
        sender.close()
        return 1
    # The result file is the outcome; this note lets the control plane settle the run from
    # storage when the final report never arrives.
    (manifest.folder / "result.json").write_text(json.dumps({"rows": rows}))
    sender.report(ScoringReport(status="succeeded", rows_done=rows, rows_total=rows))
    if not sender.close():
        log.warning("the control plane did not take the final report; it reads result.json")
    log.info("scored %d rows into %s", rows, manifest.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
