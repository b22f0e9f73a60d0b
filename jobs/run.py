"""``python -m jobs.run <job id>``: the Ray job driver, the one entrypoint the cluster runs.

The control plane submits this fixed command through Ray's Jobs API; what to do comes from the
job's manifest in artifact storage (written and validated by the API), never from the command
line. The driver prepares the data, runs the search, evaluates and audits the best trial, writes
the model bundle and reports every step as progress events.
"""

from __future__ import annotations

import dataclasses
import errno
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
import torch

from jobs.bundle import BundleError, OutputHead, load_bundle, read_bundle, save_bundle
from jobs.checkpoint import StateDict
from jobs.data import Columns, DataError, is_missing, read_columns, split_indices, take
from jobs.datasets import resolve_uri
from jobs.drift import reference_profile
from jobs.evaluate import evaluate, evaluate_anomalies, evaluate_regression
from jobs.events import UNDELIVERED, Event, EventSink
from jobs.preprocess import Preprocessor, layout_for
from jobs.spec import AutoencoderSpec, JobSpec, check_task, effective_spec, feature_columns
from jobs.tasks import Objective, Target, anomaly_scores, encode_target, infer_task, roc_auc
from jobs.train import TrainData, predict_logits

log = logging.getLogger("jobs.run")


@dataclass
class Manifest:
    job_id: str
    spec: JobSpec
    dataset_uri: str
    dataset_sha256: str
    job_dir: Path
    parent: dict[str, Any] | None = None  # transfer learning: model_id, bundle_uri, digest

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
            parent=raw.get("parent"),
        )


@dataclass
class Prepared:
    """The job's data, split and encoded; the raw test rows are kept for the audit."""

    spec: JobSpec  # with the task (and its default metric) settled
    train: TrainData
    x_test: np.ndarray
    y_test: np.ndarray
    target: Target
    preprocessor: Preprocessor
    test_features: Columns
    test_sensitive: Columns
    val_sensitive: Columns
    split_sizes: dict[str, int]
    # jobs.drift.reference_profile of the raw training rows (inputs and sensitive features):
    # every bundle carries it, so a served model's inputs can be checked for drift.
    reference: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def classes(self) -> list[Any]:
        return self.target.classes

    @property
    def positive(self) -> int:
        return self.target.positive


def _column(path: str, name: str) -> np.ndarray:
    return np.asarray(pq.read_table(path, columns=[name]).column(name).to_pylist(), object)


def prepare(spec: JobSpec, dataset_uri: str) -> Prepared:
    path = resolve_uri(dataset_uri)
    names = pq.read_schema(path).names
    features = feature_columns(spec, names)
    sensitive = spec.audit.sensitive_features
    target_name = spec.dataset.target
    if not features:
        raise DataError("no input columns left once the target and sensitive features are out")

    columns, kinds = read_columns(dataset_uri, features)
    sens_cols = {name: _column(path, name) for name in sensitive}
    target_values = _column(path, target_name)
    split_column = spec.dataset.split.column
    extra: Columns = {split_column: _column(path, split_column)} if split_column else {}
    series: np.ndarray | None = None
    if spec.dataset.sequence is not None:
        columns, kinds, picks, series = windows(spec, path, columns, kinds)
        target_values, sens_cols = target_values[picks], take(sens_cols, picks)
        extra = take(extra, picks)
    keep = ~is_missing(target_values)
    if not keep.any():
        raise DataError(f"target '{target_name}' has no values")
    if spec.task == "auto":
        spec = spec.with_task(infer_task(target_values[keep]))
    problems = check_task(spec)
    if problems:
        raise DataError("; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in problems))
    task = spec.resolved_task
    pp = spec.preprocessing
    for name in features:
        own = pp.columns.get(name)
        if ((own.impute if own else None) or pp.impute) == "drop":
            keep &= ~is_missing(columns[name])
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise DataError("no row is left once rows with missing values are dropped")
    target = encode_target(target_values[rows], task, spec.audit.positive_label, target_name)
    columns = take(columns, rows)
    sens_cols = take(sens_cols, rows)

    sp = spec.dataset.split
    method = sp.resolved_method(task)
    by = extra[sp.column][rows] if sp.column else None
    w = spec.dataset.sequence
    if series is not None and w is not None and w.id_column and sp.method is None:
        # Windows of one series overlap: the same steps must not train and test.
        method, by = "group", series[rows]
    if method == "time" and by is not None:
        by = _sortable(by, sp.column or "")
    split = split_indices(
        len(rows),
        sp.validation,
        sp.test,
        sp.seed,
        stratify_by=target.codes if method == "stratified" else None,
        groups=by if method == "group" else None,
        order_by=by if method == "time" else None,
    )
    if min(len(split.train), len(split.validation), len(split.test)) == 0:
        raise DataError(
            f"{len(rows)} rows are too few for the split "
            f"(train {len(split.train)}, validation {len(split.validation)}, "
            f"test {len(split.test)})"
        )
    pre = Preprocessor.fit(
        take(columns, split.train), kinds, pp, layout_for(spec.model.architecture, kinds)
    )
    x_train = pre.transform(take(columns, split.train))
    y_train = target.codes[split.train]
    objective = Objective.for_task(
        task, spec.training, target, y_train, math.prod(pre.example_shape)
    )
    if task == "anomaly_detection":
        # The autoencoder learns what normal rows look like: it never trains on anomalies.
        x_train, y_train = x_train[y_train == 0], y_train[y_train == 0]
    test_features = take(columns, split.test)
    train_rows = {**take(columns, split.train), **take(sens_cols, split.train)}
    return Prepared(
        spec=spec,
        train=TrainData(
            x_train=x_train,
            y_train=y_train,
            x_val=pre.transform(take(columns, split.validation)),
            y_val=target.codes[split.validation],
            n_classes=max(len(target.classes), 1),
            objective=objective,
            augmentation=pp.augmentation,
        ),
        x_test=pre.transform(test_features),
        y_test=target.codes[split.test],
        target=target,
        preprocessor=pre,
        test_features=test_features,
        test_sensitive=take(sens_cols, split.test),
        val_sensitive=take(sens_cols, split.validation),
        split_sizes={
            "train": len(split.train),
            "validation": len(split.validation),
            "test": len(split.test),
        },
        reference=reference_profile(train_rows, kinds, seed=sp.seed),
    )


def start_quality(spec: JobSpec, dataset_uri: str) -> dict[str, Any]:
    """The data quality report of what this job reads (its inputs, target and sensitive
    columns), as the data is now: the warnings, and the missing rate of each column."""
    from jobs.quality import quality_report

    path = resolve_uri(dataset_uri)
    names = pq.read_schema(path).names
    wanted = [*feature_columns(spec, names), spec.dataset.target, *spec.audit.sensitive_features]
    table = pq.read_table(path, columns=list(dict.fromkeys(wanted)))
    report = quality_report(table, spec.dataset.target)
    return {
        "rows": report["num_rows"],
        "duplicate_rows": report["duplicate_rows"],
        "warnings": report["warnings"],
        "missing_rate": {c["name"]: c["missing_rate"] for c in report["columns"]},
    }


def windows(
    spec: JobSpec, path: str, columns: Columns, kinds: dict[str, Any]
) -> tuple[Columns, dict[str, Any], np.ndarray, np.ndarray]:
    """A long table (one row per step) as sequence examples: every ``window`` consecutive steps
    of one series (``stride`` apart) become one ``[window][features]`` array, labelled by their
    last step. Returns the new columns and kinds, the row of each window's last step (to take
    its target and sensitive values) and each window's series."""
    w = spec.dataset.sequence
    assert w is not None
    plain = [name for name, kind in kinds.items() if kind != "numeric"]
    if plain:
        raise DataError(f"sequence windows are built from numeric columns; {plain} are not")
    time = _sortable(_column(path, w.time_column), w.time_column)
    ids = (
        np.asarray([str(v) for v in _column(path, w.id_column)], dtype=object)
        if w.id_column
        else np.zeros(len(time), dtype=object)
    )
    steps = np.stack([columns[name] for name in columns], axis=-1)  # (rows, features)
    starts: list[np.ndarray] = []
    for series_id in np.unique(ids):
        rows = np.flatnonzero(ids == series_id)
        rows = rows[np.argsort(time[rows], kind="stable")]
        for begin in range(0, len(rows) - w.window + 1, w.stride):
            starts.append(rows[begin : begin + w.window])
    if not starts:
        raise DataError(
            f"no series has {w.window} steps: dataset.sequence.window is longer than every series"
        )
    idx = np.stack(starts)  # (windows, window)
    last = idx[:, -1]
    return {"window": steps[idx]}, {"window": "array"}, last, ids[last]


def _sortable(values: np.ndarray, name: str) -> np.ndarray:
    """Time values as something argsort orders correctly: numbers, or ISO dates as text."""
    present = [v for v in values.tolist() if v is not None]
    if len(present) != len(values):
        raise DataError(f"split column '{name}' has missing values; a time split needs them all")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return np.asarray(present, dtype=np.float64)
    return np.asarray([str(v) for v in present], dtype=object)


def records(columns: Columns, rows: int) -> list[dict[str, Any]]:
    """The first ``rows`` rows as JSON-ready dicts (missing values as null)."""
    n = min(rows, len(next(iter(columns.values()))))
    return [{name: _json_value(values[i]) for name, values in columns.items()} for i in range(n)]


def _json_value(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v]
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    return v


def execute(manifest: Manifest, sink: EventSink) -> dict[str, Any]:
    """Everything the job does once it runs; returns the result event's data."""
    # Imported here, not at the top: the driver reports `running` before paying for them, and
    # fairlearn (with sklearn and pandas) alone costs over a second of start-up.
    import ray

    from jobs.search import rebuild, run_search

    prepared = prepare(manifest.spec, manifest.dataset_uri)
    spec = prepared.spec
    sink.emit(
        "job.running",
        "job.running.prepared",
        stage="search",
        task=spec.resolved_task,
        split_sizes=prepared.split_sizes,
        classes=prepared.classes,
        data_quality=start_quality(spec, manifest.dataset_uri),
    )
    data = prepared.train
    if manifest.parent is not None:
        data = dataclasses.replace(data, init_state=parent_weights(manifest.parent, spec))
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    best = run_search(spec, data, manifest.job_dir / "tune", manifest.job_id, sink)

    model = rebuild(
        spec,
        best.config,
        prepared.preprocessor.example_shape,
        prepared.train.task.n_outputs,
        best.state,
    )
    evaluation, pred, decision = evaluate_best(prepared, model, effective_spec(spec, best.config))
    audit = audit_predictions(prepared, spec, pred)
    if spec.audit.mitigation is not None and audit is not None:
        audit["mitigation"] = mitigated_candidate(prepared, model, spec, best, manifest)
        audit["mitigation"]["compared_with"] = {
            "accuracy": evaluation.get("accuracy"),
            "passed": audit["passed"],
        }
    bundle_dir = manifest.job_dir / "model"
    digest = save_bundle(
        bundle_dir,
        best.state,
        effective_spec(spec, best.config).model,
        prepared.preprocessor,
        OutputHead.of(prepared.target, decision.get("threshold")),
        records(prepared.test_features, 5),
        metadata={
            "job_id": manifest.job_id,
            "trial_id": best.trial_id,
            "dataset_sha256": manifest.dataset_sha256,
            "parent_model_id": (manifest.parent or {}).get("model_id"),
        },
        reference=prepared.reference,
    )
    if spec.promotion.compression_requested:
        sink.emit("job.running", "job.running.compress", stage="compress")
        # Beside the test metrics, so GET /v1/jobs/{id}/evaluation shows the report.
        evaluation["compression"] = compressed_candidate(
            prepared, model, spec, best, manifest, (evaluation, pred, audit)
        )
    return {
        "best_trial": {"trial_id": best.trial_id, "config": best.config, "metrics": best.metrics},
        "evaluation": evaluation,
        "audit": audit,
        "bundle": {"uri": str(bundle_dir), "digest": digest},
    }


def mitigated_candidate(
    prepared: Prepared, model: torch.nn.Module, spec: JobSpec, best: Any, manifest: Manifest
) -> dict[str, Any]:
    """The best model with per-group thresholds (fairlearn's ThresholdOptimizer) fitted on the
    validation split, evaluated and audited on the test split like the original, and written
    as a bundle of its own that applies the thresholds when serving."""
    from jobs.audit import run_audit
    from jobs.mitigation import (
        apply_decisions,
        fit_group_thresholds,
        positive_probability,
        thresholds_json,
    )

    m = spec.audit.mitigation
    feature = spec.audit.mitigation_feature
    assert m is not None and feature is not None
    if len(prepared.classes) != 2:
        raise DataError(
            f"audit.mitigation needs a target with two classes; it has {len(prepared.classes)}"
        )
    pos, data = prepared.positive, prepared.train

    def scores(x: np.ndarray) -> np.ndarray:
        return torch.softmax(predict_logits(model, x), dim=1)[:, pos].numpy().astype(np.float64)

    try:
        optimizer = fit_group_thresholds(
            scores(data.x_val),
            (data.y_val == pos).astype(np.int64),
            prepared.val_sensitive[feature],
            constraint=m.constraint,
            objective=m.objective,
        )
        thresholds = thresholds_json(optimizer)
        chance = positive_probability(
            thresholds, scores(prepared.x_test), prepared.test_sensitive[feature]
        )
    except ValueError as exc:
        raise DataError(f"audit.mitigation: {exc}") from exc
    favourable = apply_decisions(chance, seed=spec.audit.bootstrap.seed)
    pred = np.where(favourable, pos, 1 - pos)
    majority = int(np.bincount(data.y_train, minlength=2).argmax())
    evaluation = evaluate(prepared.y_test, pred, prepared.classes, pos, majority)
    audit = run_audit(
        (prepared.y_test == pos).astype(np.int8),
        favourable.astype(np.int8),
        prepared.test_sensitive,
        spec.audit,
        positive_label=prepared.classes[pos],
    )
    group_thresholds = {"feature": feature, "positive": pos, "groups": thresholds}
    folder = manifest.job_dir / "model-mitigated"
    digest = save_bundle(
        folder,
        best.state,
        effective_spec(spec, best.config).model,
        prepared.preprocessor,
        OutputHead.of(prepared.target, group_thresholds=group_thresholds),
        records({**prepared.test_features, feature: prepared.test_sensitive[feature]}, 5),
        metadata={
            "job_id": manifest.job_id,
            "trial_id": best.trial_id,
            "dataset_sha256": manifest.dataset_sha256,
            "candidate": "mitigated",
        },
        reference=prepared.reference,
    )
    return {
        "method": m.method,
        "feature": feature,
        "constraint": m.constraint,
        "objective": m.objective,
        "fitted_on": "validation split",
        "thresholds": thresholds,
        "evaluation": evaluation,
        "audit": audit,
        "bundle": {"uri": str(folder), "digest": digest},
        "serving_note": f"a prediction request for this candidate must carry '{feature}'",
    }


def audit_predictions(prepared: Prepared, spec: JobSpec, pred: np.ndarray) -> dict[str, Any] | None:
    """The fairness audit of test-split predictions (None for a regression without sensitive
    features)."""
    from jobs.audit import AuditInputError, run_audit, run_regression_audit

    try:
        if spec.resolved_task != "regression":
            # Outcomes as favourable or not: the positive class (one-vs-rest when there are
            # more), or "flagged as an anomaly".
            return run_audit(
                (prepared.y_test == prepared.positive).astype(np.int8),
                (pred == prepared.positive).astype(np.int8),
                prepared.test_sensitive,
                spec.audit,
                positive_label=prepared.classes[prepared.positive],
            )
        if spec.audit.sensitive_features:
            return run_regression_audit(
                prepared.target.decode(prepared.y_test),
                pred,
                prepared.test_sensitive,
                spec.audit,
            )
    except AuditInputError as exc:
        # e.g. a sensitive column with one value in the test split: the job fails saying so.
        raise DataError(f"the fairness audit cannot run on the test split: {exc}") from exc
    return None


# Test rows per timed forward when comparing the latency of the original and compressed model.
LATENCY_BATCH = 256


def compressed_candidate(
    prepared: Prepared,
    model: torch.nn.Module,
    spec: JobSpec,
    best: Any,
    manifest: Manifest,
    original: tuple[dict[str, Any], np.ndarray, dict[str, Any] | None],
) -> dict[str, Any]:
    """The best model pruned and/or quantized (promotion.compress, promotion.prune): evaluated
    and audited on the test split like the original (compression can move fairness), measured
    beside it (size, CPU latency), and written as a bundle of its own whose loader quantizes
    it again. ``original``: the best model's evaluation, test predictions and audit."""
    from jobs.compress import Compression, compare_latency, compress, serialized_size, sparsity

    p = spec.promotion
    compression = Compression(p.compress, p.prune)
    eff = effective_spec(spec, best.config)
    try:
        variant = compress(model, compression)
    except ValueError as exc:
        raise DataError(f"promotion.prune: {exc}") from exc
    served = variant.model
    evaluation, pred, decision = evaluate_best(prepared, served, eff)
    audit = audit_predictions(prepared, spec, pred)
    folder = manifest.job_dir / "model-compressed"
    digest = save_bundle(
        folder,
        variant.state,
        eff.model,
        prepared.preprocessor,
        OutputHead.of(prepared.target, decision.get("threshold")),
        records(prepared.test_features, 5),
        metadata={
            "job_id": manifest.job_id,
            "trial_id": best.trial_id,
            "dataset_sha256": manifest.dataset_sha256,
            "parent_model_id": (manifest.parent or {}).get("model_id"),
            "candidate": "compressed",
        },
        compression=compression,
        reference=prepared.reference,
    )
    check_served_like_evaluated(folder, digest, served, prepared.x_test[:LATENCY_BATCH])
    original_eval, original_pred, original_audit = original
    model.eval()
    original_ms, served_ms = compare_latency(model, served, prepared.x_test[:LATENCY_BATCH])
    size, original_size = serialized_size(served), serialized_size(model)
    agreement = (
        None
        if spec.resolved_task == "regression"
        else float(np.mean(pred == original_pred))
        if len(pred)
        else None
    )
    return {
        "method": compression.method,
        "quantize": compression.quantize,
        "prune": compression.prune,
        "sparsity": variant.sparsity,
        "original_sparsity": sparsity(model),
        "size_bytes": size["bytes"],
        "original_size_bytes": original_size["bytes"],
        "size_ratio": size["bytes"] / original_size["bytes"],
        "deflated_size_bytes": size["deflated_bytes"],
        "original_deflated_size_bytes": original_size["deflated_bytes"],
        "latency_ms_p50": served_ms,
        "original_latency_ms_p50": original_ms,
        "latency_batch_rows": min(LATENCY_BATCH, len(prepared.x_test)),
        "latency_device": "cpu",
        "metrics": _figures(evaluation),
        "original_metrics": _figures(original_eval),
        "prediction_agreement": agreement,
        "audit_passed": audit.get("passed") if audit is not None else None,
        "original_audit_passed": original_audit.get("passed")
        if original_audit is not None
        else None,
        "evaluation": evaluation,
        "audit": audit,
        "bundle": {"uri": str(folder), "digest": digest},
    }


def _figures(evaluation: dict[str, Any]) -> dict[str, float]:
    """The headline test figures of an evaluation (its top-level numbers)."""
    return {
        k: float(v)
        for k, v in evaluation.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "num_rows"
    }


def check_served_like_evaluated(
    folder: Path, digest: str, served: torch.nn.Module, x: np.ndarray
) -> None:
    """The bundle, loaded as a serving replica loads it, must compute what was evaluated:
    otherwise the report would describe a model nobody serves."""
    loaded = load_bundle(folder, digest).model
    if not torch.equal(predict_logits(loaded, x), predict_logits(served, x)):
        raise RuntimeError(f"the compressed bundle in {folder} does not load as evaluated")


def parent_weights(parent: dict[str, Any], spec: JobSpec) -> StateDict:
    """The weights a transfer-learning job starts from, checked against their digest."""
    try:
        manifest, weights = read_bundle(parent["bundle_uri"], parent["bundle_digest"])
    except BundleError as exc:
        raise DataError(f"model.init_from: {exc}") from exc
    if manifest["model"]["architecture"] != spec.model.architecture:
        raise DataError(
            f"model.init_from: model {parent['model_id']} is a "
            f"{manifest['model']['architecture']}, this job trains a {spec.model.architecture}"
        )
    return weights


def evaluate_best(
    prepared: Prepared, model: torch.nn.Module, spec: JobSpec
) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    """The test-split evaluation of the best model, its predictions (class codes; anomaly
    flags; values in the target's units for regression) and what serving needs to decide
    like it (the anomaly threshold)."""
    target, data = prepared.target, prepared.train
    outputs = predict_logits(model, prepared.x_test)
    task = spec.resolved_task
    if task == "regression":
        values = target.decode(outputs.reshape(-1).numpy())
        return (
            evaluate_regression(target.decode(prepared.y_test), values, target.center),
            values,
            {},
        )
    if task == "anomaly_detection":
        assert isinstance(spec.model, AutoencoderSpec)
        val_scores = anomaly_scores(
            predict_logits(model, data.x_val),
            torch.from_numpy(np.require(data.x_val, requirements="W")),
        )
        normal = val_scores[data.y_val == 0]
        if normal.size == 0:
            raise DataError("the validation split has no normal rows to set the threshold on")
        threshold = float(np.quantile(normal, spec.model.threshold_quantile))
        scores = anomaly_scores(
            outputs, torch.from_numpy(np.require(prepared.x_test, requirements="W"))
        )
        doc = evaluate_anomalies(
            prepared.y_test, scores, threshold, target.classes, roc_auc(scores, prepared.y_test)
        )
        return doc, (scores > threshold).astype(np.int64), {"threshold": threshold}
    pred = outputs.argmax(1).numpy()
    majority = int(np.bincount(data.y_train, minlength=len(target.classes)).argmax())
    doc = evaluate(prepared.y_test, pred, target.classes, target.positive, majority)
    return doc, pred, {}


# How long the driver, its work done, keeps trying to deliver its last events.
FLUSH_TIMEOUT_S = float(os.environ.get("CRUCIBLE_EVENTS_FLUSH_TIMEOUT_S", "120"))


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it, is a full disk (or quota), also when a library
    (Tune, pyarrow) passed it on as text."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def failure_reason(exc: BaseException) -> str:
    """What the job's error says: the message of a known failure, the storage's state when
    the artifact store is full, else the exception's type and message."""
    if disk_full(exc):
        where = getattr(exc, "filename", None)
        if where:
            detail = f" (writing {where})"
        elif isinstance(exc, OSError):
            detail = ""
        else:
            detail = f" ({type(exc).__name__}: {exc})"
        return f"artifact store full: No space left on device{detail}"
    known = isinstance(exc, DataError) or type(exc).__name__ in ("SearchFailed",)
    return str(exc) if known else f"{type(exc).__name__}: {exc}"


def write_result(job_dir: Path, result: dict[str, Any]) -> None:
    """result.json, all or nothing: the reconciler ingests it when the final event is lost."""
    path = job_dir / "result.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        tmp.unlink(missing_ok=True)
        raise


def save_undelivered(job_dir: Path, events: list[Event]) -> bool:
    """Append the events the API never took to the job's folder (one JSON a line)."""
    try:
        with open(job_dir / UNDELIVERED, "a") as f:
            f.write("".join(e.model_dump_json() + "\n" for e in events))
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        log.exception("could not keep the undelivered events in %s", job_dir)
        return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if len(argv) != 2:
        print("usage: python -m jobs.run <job id>", file=sys.stderr)
        return 2
    job_id = argv[1]
    manifest = Manifest.load(os.environ["CRUCIBLE_ARTIFACT_ROOT"], job_id)
    sink = EventSink(os.environ["CRUCIBLE_API_URL"], job_id, os.environ["CRUCIBLE_JOB_TOKEN"])
    log.info("driver for job %s started (pid %d)", job_id, os.getpid())
    # The pid lets an operator (or a chaos test) find the driver of a job.
    sink.emit("job.running", f"job.running:{os.getpid()}", stage="prepare", pid=os.getpid())
    code = 0
    try:
        result = execute(manifest, sink)
        write_result(manifest.job_dir, result)
        sink.emit("job.succeeded", "job.succeeded", **result)
    except Exception as exc:
        traceback.print_exc()
        sink.emit("job.failed", "job.failed", error=failure_reason(exc))
        code = 1
    if not sink.close(timeout=FLUSH_TIMEOUT_S):
        pending = sink.undelivered()
        log.error("could not deliver %d event(s) to the control plane", len(pending))
        # Kept for the reconciler, which settles the job from them once the API is back.
        if not save_undelivered(manifest.job_dir, pending):
            code = code or 3
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
