"""``python -m jobs.run <job id>``: the Ray job driver, the one entrypoint the cluster runs.

The control plane submits this fixed command through Ray's Jobs API; what to do comes from the
job's manifest in artifact storage (written and validated by the API), never from the command
line. The driver prepares the data, runs the search, evaluates and audits the best trial, writes
the model bundle and reports every step as progress events.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from jobs.bundle import save_bundle
from jobs.data import (
    Columns,
    DataError,
    Preprocessor,
    encode_labels,
    is_missing,
    read_columns,
    split_indices,
    take,
)
from jobs.datasets import resolve_uri
from jobs.evaluate import evaluate
from jobs.events import EventSink
from jobs.spec import JobSpec, effective_spec, feature_columns
from jobs.train import TrainData, predict_logits

log = logging.getLogger("jobs.run")
MAX_CLASSES = 100


@dataclass
class Manifest:
    job_id: str
    spec: JobSpec
    dataset_uri: str
    dataset_sha256: str
    job_dir: Path

    @classmethod
    def load(cls, artifact_root: str, job_id: str) -> Manifest:
        job_dir = Path(artifact_root) / "jobs" / job_id
        raw = json.loads((job_dir / "manifest.json").read_text())
        return cls(
            job_id=job_id,
            spec=JobSpec.model_validate(raw["spec"]),
            dataset_uri=raw["dataset"]["uri"],
            dataset_sha256=raw["dataset"]["sha256"],
            job_dir=job_dir,
        )


@dataclass
class Prepared:
    """The job's data, split and encoded; the raw test rows are kept for the audit."""

    train: TrainData
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[Any]
    positive: int
    preprocessor: Preprocessor
    test_features: Columns
    test_sensitive: Columns
    split_sizes: dict[str, int]


def prepare(spec: JobSpec, dataset_uri: str) -> Prepared:
    path = resolve_uri(dataset_uri)
    names = pq.read_schema(path).names
    features = feature_columns(spec, names)
    sensitive = spec.audit.sensitive_features
    target = spec.dataset.target
    if not features:
        raise DataError("no input columns left once the target and sensitive features are out")

    columns, kinds = read_columns(dataset_uri, features)
    sens_cols = {
        name: np.asarray(pq.read_table(path, columns=[name]).column(name).to_pylist(), object)
        for name in sensitive
    }
    target_values = np.asarray(
        pq.read_table(path, columns=[target]).column(target).to_pylist(), dtype=object
    )
    keep = ~is_missing(target_values)
    if not keep.any():
        raise DataError(f"target '{target}' has no values")
    labels = encode_labels(target_values[keep])
    if len(labels.classes) < 2:
        raise DataError(
            f"target '{target}' has a single class {labels.classes!r}: nothing to learn"
        )
    if len(labels.classes) > MAX_CLASSES:
        raise DataError(
            f"target '{target}' has {len(labels.classes)} distinct values; classification "
            f"supports up to {MAX_CLASSES} classes"
        )
    positive_label = spec.audit.positive_label
    if positive_label is None:
        positive = len(labels.classes) - 1
    else:
        as_text = [str(c) for c in labels.classes]
        if positive_label not in as_text:
            raise DataError(
                f"audit.positive_label '{positive_label}' is not a class of '{target}': {as_text}"
            )
        positive = as_text.index(positive_label)

    columns = take(columns, np.flatnonzero(keep))
    sens_cols = take(sens_cols, np.flatnonzero(keep))
    sp = spec.dataset.split
    split = split_indices(
        len(labels.codes),
        sp.validation,
        sp.test,
        sp.seed,
        stratify_by=labels.codes if sp.stratify else None,
    )
    if min(len(split.train), len(split.validation), len(split.test)) == 0:
        raise DataError(
            f"{len(labels.codes)} rows are too few for the split "
            f"(train {len(split.train)}, validation {len(split.validation)}, "
            f"test {len(split.test)})"
        )
    pre = Preprocessor.fit(
        take(columns, split.train), kinds, spec.preprocessing.impute, spec.preprocessing.scale
    )
    test_features = take(columns, split.test)
    return Prepared(
        train=TrainData(
            x_train=pre.transform(take(columns, split.train)),
            y_train=labels.codes[split.train],
            x_val=pre.transform(take(columns, split.validation)),
            y_val=labels.codes[split.validation],
            n_classes=len(labels.classes),
        ),
        x_test=pre.transform(test_features),
        y_test=labels.codes[split.test],
        classes=labels.classes,
        positive=positive,
        preprocessor=pre,
        test_features=test_features,
        test_sensitive=take(sens_cols, split.test),
        split_sizes={
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
        },
    )


def records(columns: Columns, rows: int) -> list[dict[str, Any]]:
    """The first ``rows`` rows as JSON-ready dicts (missing values as null)."""
    out = []
    for i in range(min(rows, len(next(iter(columns.values()))))):
        rec: dict[str, Any] = {}
        for name, values in columns.items():
            v = values[i]
            if isinstance(v, float | np.floating):
                rec[name] = None if math.isnan(v) else float(v)
            else:
                rec[name] = v
        out.append(rec)
    return out


def execute(manifest: Manifest, sink: EventSink) -> dict[str, Any]:
    """Everything the job does once it runs; returns the result event's data."""
    # Imported here, not at the top: the driver reports `running` before paying for them, and
    # fairlearn (with sklearn and pandas) alone costs over a second of start-up.
    import ray

    from jobs.audit import AuditInputError, run_audit
    from jobs.search import rebuild, run_search

    spec = manifest.spec
    prepared = prepare(spec, manifest.dataset_uri)
    sink.emit(
        "job.running",
        "job.running.prepared",
        stage="search",
        split_sizes=prepared.split_sizes,
        classes=prepared.classes,
    )
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    best = run_search(spec, prepared.train, manifest.job_dir / "tune", manifest.job_id, sink)

    model = rebuild(
        spec, best.config, prepared.preprocessor.num_features, len(prepared.classes), best.state
    )
    pred = predict_logits(model, prepared.x_test).argmax(1).numpy()
    evaluation = evaluate(prepared.y_test, pred, prepared.classes, prepared.positive)
    try:
        audit = run_audit(
            (prepared.y_test == prepared.positive).astype(np.int8),
            (pred == prepared.positive).astype(np.int8),
            prepared.test_sensitive,
            spec.audit,
            positive_label=prepared.classes[prepared.positive],
        )
    except AuditInputError as exc:
        # e.g. a sensitive column with one value in the test split: the job fails saying so.
        raise DataError(f"the fairness audit cannot run on the test split: {exc}") from exc
    bundle_dir = manifest.job_dir / "model"
    digest = save_bundle(
        bundle_dir,
        best.state,
        effective_spec(spec, best.config).model,
        prepared.preprocessor,
        prepared.classes,
        records(prepared.test_features, 5),
        metadata={
            "job_id": manifest.job_id,
            "trial_id": best.trial_id,
            "dataset_sha256": manifest.dataset_sha256,
        },
    )
    return {
        "best_trial": {"trial_id": best.trial_id, "config": best.config, "metrics": best.metrics},
        "evaluation": evaluation,
        "audit": audit,
        "bundle": {"uri": str(bundle_dir), "digest": digest},
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if len(argv) != 2:
        print("usage: python -m jobs.run <job id>", file=sys.stderr)
        return 2
    job_id = argv[1]
    manifest = Manifest.load(os.environ["CRUCIBLE_ARTIFACT_ROOT"], job_id)
    sink = EventSink(os.environ["CRUCIBLE_API_URL"], job_id, os.environ["CRUCIBLE_JOB_TOKEN"])
    # The pid lets an operator (or a chaos test) find the driver of a job.
    sink.emit("job.running", f"job.running:{os.getpid()}", stage="prepare", pid=os.getpid())
    code = 0
    try:
        result = execute(manifest, sink)
        (manifest.job_dir / "result.json").write_text(json.dumps(result))
        sink.emit("job.succeeded", "job.succeeded", **result)
    except Exception as exc:
        traceback.print_exc()
        known = isinstance(exc, DataError) or type(exc).__name__ in ("SearchFailed",)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        sink.emit("job.failed", "job.failed", error=message)
        code = 1
    if not sink.close(timeout=120):
        log.error("could not deliver every event to the control plane")
        code = code or 3
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
