"""After the search: the best model evaluated and audited on the test split, its bundle
written, and the candidates a spec asks for beside it (fairness-mitigated, compressed).

Imported by the driver once its search is over: this is where the driver first needs torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from jobs.bundle import OutputHead, load_bundle, save_bundle
from jobs.data import DataError
from jobs.evaluate import evaluate, evaluate_anomalies, evaluate_regression
from jobs.events import EventSink
from jobs.prepare import Prepared, records
from jobs.search import BestTrial, rebuild
from jobs.spec import AutoencoderSpec, JobSpec, effective_spec
from jobs.tasks import anomaly_scores, roc_auc
from jobs.train import predict_logits

if TYPE_CHECKING:
    from jobs.run import Manifest


def finish(
    manifest: Manifest, prepared: Prepared, best: BestTrial, sink: EventSink
) -> dict[str, Any]:
    """Everything after the search; returns the result event's data."""
    spec = prepared.spec
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
