"""Serving monitoring: prediction logs from the replicas, feedback labels from clients, and
the live figures over an endpoint's most recent logged predictions, per model version:
latency, prediction distribution, live accuracy, live fairness and input drift (PSI against
the profile of the training inputs that every bundle carries, see ``jobs.drift``).

A drift alert is the endpoint's ``alert`` column ("drift") plus an ``endpoint_events`` row
each time it is raised or cleared. It is judged after ingested predictions (at most once per
second per endpoint; a skipped judgement runs when the second is over), on every GET of the
figures, and when Prometheus scrapes them (figures cached a few seconds there).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.orm import Session

from jobs.bundle import BundleError, read_manifest
from jobs.drift import category_key, psi
from jobs.spec import ServingSpec
from services.core.errors import NotFound
from services.store.db import Database
from services.store.models import Endpoint, EndpointEvent, utcnow
from services.store.repositories import (
    EndpointRepository,
    JobRepository,
    ModelRepository,
    MonitoringRepository,
)

log = logging.getLogger("crucible.monitoring")

MAX_ITEMS = 10_000
# PSI over few rows is noise, and biased upwards (about (bins - 1) / rows: a feature with 40
# categories reads ~0.3 over 150 unshifted rows): a model version is judged on this many rows,
# or on a full window when the window is smaller.
MIN_DRIFT_ROWS = 300


def min_drift_rows(spec: ServingSpec) -> int:
    return min(MIN_DRIFT_ROWS, spec.monitoring_window)


DRIFT_ALERT = "drift"
RAISED, CLEARED = "drift_alert_raised", "drift_alert_cleared"
# Latest unix time a record may carry (year 3000): a typo in ms, not s, is refused.
_MAX_TS = 32_503_680_000.0
_TOP_PREDICTIONS = 50
# Exported to Prometheus per sensitive feature (label "metric").
FAIRNESS_METRICS = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# JSON scalars, strict so that true stays a bool and "1" stays a string.
Scalar = bool | int | FiniteFloat | str


def _finite_or_none(value: Any) -> Any:
    """NaN and infinity (which Python's JSON parser lets through, and PostgreSQL's JSON cannot
    store) as None: a missing value, as training reads one. A replica posts what clients sent,
    and one odd number must not get a whole batch of records refused."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


class PredictionRecord(BaseModel):
    """One logged prediction, as a replica posts it."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    index: int = Field(ge=0, le=2**31 - 1, description="Position of the instance in its request.")
    model_id: str = Field(min_length=1, max_length=40)
    ts: float = Field(ge=0, le=_MAX_TS, allow_inf_nan=False, description="Unix seconds.")
    features: dict[str, Any] = Field(description="The instance as the client sent it.")
    prediction: Scalar | None
    score: FiniteFloat | None = None
    latency_ms: float = Field(ge=0, allow_inf_nan=False)

    @field_validator("features", "prediction", "score", mode="before")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        return _finite_or_none(v)


class PredictionBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    records: list[PredictionRecord] = Field(max_length=MAX_ITEMS)


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=64)
    index: int = Field(0, ge=0, le=2**31 - 1)
    label: Scalar = Field(description="The true label (or value) of that prediction.")


class FeedbackBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[FeedbackItem] = Field(min_length=1, max_length=MAX_ITEMS)


def serving_spec(e: Endpoint) -> ServingSpec:
    """The endpoint's serving settings; the defaults for rows written before they were kept
    (or in a shape this version cannot read)."""
    if e.serving is None:
        return ServingSpec()
    try:
        return ServingSpec.model_validate(e.serving)
    except ValidationError:
        log.warning("endpoint %s has serving settings this version cannot read", e.name)
        return ServingSpec()


def alert_view(s: Session, e: Endpoint) -> dict[str, Any]:
    """``alert`` (None, or "drift") and since when, for the endpoint's view."""
    since = None
    if e.alert is not None:
        raised = MonitoringRepository(s).last_event(e.name, RAISED)
        since = raised.ts.isoformat() if raised is not None else None
    return {"alert": e.alert, "alert_since": since}


def event_view(ev: EndpointEvent) -> dict[str, Any]:
    return {"id": ev.id, "type": ev.type, "at": ev.ts.isoformat(), "data": ev.data}


@dataclass(frozen=True)
class ModelInfo:
    """What the figures need to know of a model version: its task, the favourable class, the
    sensitive features of its job's audit, and the training inputs' profile (None: unknown)."""

    model_id: str
    task: str | None = None
    positive_label: Any = None
    sensitive_features: tuple[str, ...] = ()
    reference: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Row:
    model_id: str
    features: dict[str, Any]
    prediction: Any
    latency_ms: float
    label: Any
    labelled: bool


@dataclass
class EndpointSamples:
    """One endpoint's figures as Prometheus samples."""

    endpoint: str
    alert: bool
    accuracy: list[tuple[str, float]] = field(default_factory=list)  # model_id, value
    # model_id, sensitive feature, metric, value
    fairness: list[tuple[str, str, str, float]] = field(default_factory=list)
    psi: list[tuple[str, str, float]] = field(default_factory=list)  # model_id, feature, PSI


class Monitor:
    """The monitoring of one API process: holds the per-model cache, the per-endpoint cache of
    figures and the throttle of alert judgements."""

    # Model facts never change; a bundle that could not be read is tried again after this.
    RETRY_UNREADABLE_S = 60.0
    MAX_MODELS = 256

    def __init__(self, db: Database, throttle_s: float = 1.0) -> None:
        self.db = db
        self.throttle_s = throttle_s
        self._lock = threading.Lock()
        self._models: dict[str, tuple[ModelInfo, float]] = {}
        self._figures: dict[str, tuple[float, dict[str, Any]]] = {}
        self._judged: dict[str, float] = {}
        self._pending: dict[str, threading.Timer] = {}
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for timer in self._pending.values():
                timer.cancel()
            self._pending.clear()

    # --- writes ---------------------------------------------------------------------------

    def ingest(self, name: str, records: Sequence[PredictionRecord]) -> dict[str, Any]:
        """Store a replica's logged predictions (a resent one is not stored twice)."""
        with self.db.session() as s:
            if EndpointRepository(s).get(name) is None:
                raise NotFound(f"no endpoint '{name}'")
            rows = [
                {
                    "endpoint": name,
                    "model_id": r.model_id,
                    "request_id": r.request_id,
                    "index": r.index,
                    "ts": datetime.fromtimestamp(r.ts, UTC),
                    "features": r.features,
                    "prediction": r.prediction,
                    "score": r.score,
                    "latency_ms": r.latency_ms,
                }
                for r in records
            ]
            stored = MonitoringRepository(s).add_predictions(rows) if rows else 0
        if stored:
            self._judge_soon(name)
        return {"accepted": len(records), "stored": stored}

    def feedback(self, name: str, items: Sequence[FeedbackItem]) -> dict[str, Any]:
        """Label logged predictions by (request id, index); the last label of a pair wins."""
        with self.db.session() as s:
            if EndpointRepository(s).get(name) is None:
                raise NotFound(f"no endpoint '{name}'")
            repo = MonitoringRepository(s)
            ids = repo.prediction_ids(name, [i.request_id for i in items])
            labels: dict[int, Any] = {}
            unmatched = 0
            for item in items:
                row_id = ids.get((item.request_id, item.index))
                if row_id is None:
                    unmatched += 1
                else:
                    labels[row_id] = item.label
            repo.set_labels(labels, utcnow())
        with self._lock:
            self._figures.pop(name, None)
        return {"matched": len(items) - unmatched, "unmatched": unmatched}

    def events(self, name: str, after_id: int = 0, limit: int = 100) -> dict[str, Any]:
        with self.db.session() as s:
            if EndpointRepository(s).get(name) is None:
                raise NotFound(f"no endpoint '{name}'")
            items = MonitoringRepository(s).events(name, after_id, limit)
            return {"items": [event_view(ev) for ev in items]}

    # --- figures --------------------------------------------------------------------------

    def figures(self, name: str, max_age_s: float = 0.0) -> dict[str, Any]:
        """The live figures of an endpoint (recomputed when older than ``max_age_s``); judges
        the drift alert on them when recomputed."""
        if max_age_s > 0:
            with self._lock:
                cached = self._figures.get(name)
            if cached is not None and time.monotonic() - cached[0] < max_age_s:
                return cached[1]
        with self.db.session() as s:
            e = EndpointRepository(s).get(name)
            if e is None:
                raise NotFound(f"no endpoint '{name}'")
            spec = serving_spec(e)
            logged = MonitoringRepository(s).window(name, spec.monitoring_window)
            rows = [_Row(*r) for r in logged]
            serving = [m for m in (e.model_id, e.canary_model_id) if m]
            canary = (
                {"model_id": e.canary_model_id, "percent": e.canary_percent}
                if e.canary_model_id
                else None
            )
        by_model: dict[str, list[_Row]] = defaultdict(list)
        for r in rows:
            by_model[r.model_id].append(r)
        order = serving + sorted(
            (m for m in by_model if m not in serving), key=lambda m: -len(by_model[m])
        )
        models = [
            _model_figures(self.model_info(m), by_model.get(m, []), len(rows), spec) for m in order
        ]
        alert = self._judge(name, models, spec, len(rows))
        result = {
            "endpoint": name,
            "model_id": serving[0],
            "canary": canary,
            "window": spec.monitoring_window,
            "logged": len(rows),
            "drift_threshold": spec.drift_threshold,
            "min_drift_rows": min_drift_rows(spec),
            "alert": alert,
            "models": models,
            "computed_at": utcnow().isoformat(),
        }
        with self._lock:
            self._figures[name] = (time.monotonic(), result)
        return result

    def samples(self, max_age_s: float = 5.0) -> list[EndpointSamples]:
        """Every endpoint's figures as Prometheus samples (one broken endpoint is logged and
        left out, never the whole scrape)."""
        with self.db.session() as s:
            names = [e.name for e in EndpointRepository(s).list()]
        out = []
        for name in names:
            try:
                fig = self.figures(name, max_age_s)
            except NotFound:
                continue
            except Exception:
                log.exception("monitoring figures of endpoint %s failed", name)
                continue
            out.append(_samples(fig))
        return out

    def model_info(self, model_id: str) -> ModelInfo:
        now = time.monotonic()
        with self._lock:
            hit = self._models.get(model_id)
        if hit is not None and now < hit[1]:
            return hit[0]
        info, readable = self._load_model(model_id)
        with self._lock:
            if len(self._models) >= self.MAX_MODELS:
                self._models.pop(next(iter(self._models)))
            self._models[model_id] = (info, math.inf if readable else now + self.RETRY_UNREADABLE_S)
        return info

    def _load_model(self, model_id: str) -> tuple[ModelInfo, bool]:
        with self.db.session() as s:
            m = ModelRepository(s).get(model_id)
            if m is None:
                return ModelInfo(model_id), True
            job = JobRepository(s).get(m.job_id)
            spec = (job.spec if job is not None else None) or {}
            audit = (job.audit if job is not None else None) or {}
            sensitive = tuple((spec.get("audit") or {}).get("sensitive_features") or ())
            uri, digest = m.bundle_uri, m.bundle_digest
        try:
            manifest = read_manifest(uri, digest)
        except (BundleError, OSError, ValueError) as exc:
            log.warning("model %s: bundle manifest unreadable, drift unknown: %s", model_id, exc)
            return ModelInfo(model_id, None, audit.get("positive_label"), sensitive), False
        reference = manifest.get("reference")
        return (
            ModelInfo(
                model_id,
                manifest.get("task"),
                audit.get("positive_label"),
                sensitive,
                reference if isinstance(reference, dict) else None,
            ),
            True,
        )

    # --- the alert ------------------------------------------------------------------------

    def _judge_soon(self, name: str) -> None:
        """Judge the alert now, or once the endpoint's throttle second is over."""
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            wait = self._judged.get(name, -math.inf) + self.throttle_s - now
            if wait > 0:
                if name not in self._pending:
                    timer = threading.Timer(wait, self._judge_later, (name,))
                    timer.daemon = True
                    self._pending[name] = timer
                    timer.start()
                return
            self._judged[name] = now
        try:
            self.figures(name)
        except Exception:
            # The records are stored; the next ingest, GET or scrape judges again.
            log.exception("judging the drift alert of endpoint %s failed", name)

    def _judge_later(self, name: str) -> None:
        with self._lock:
            self._pending.pop(name, None)
            if self._closed:
                return
            self._judged[name] = time.monotonic()
        try:
            self.figures(name)
        except Exception:
            log.exception("judging the drift alert of endpoint %s failed", name)

    def _judge(
        self, name: str, models: list[dict[str, Any]], spec: ServingSpec, rows: int
    ) -> str | None:
        """Raise the drift alert when a judged version has a feature over the threshold; clear
        it when versions were judged and none has. Returns the endpoint's alert after."""
        judged = [m for m in models if m["drift"]["status"] in ("ok", "drifted")]
        drifted = {
            m["model_id"]: {f: d["psi"] for f, d in m["drift"]["features"].items() if d["drifted"]}
            for m in judged
            if m["drift"]["status"] == "drifted"
        }
        worst: dict[str, float] = {}
        for m in judged:
            for f, d in m["drift"]["features"].items():
                if d["psi"] is not None:
                    worst[f] = max(worst.get(f, 0.0), d["psi"])
        data = {"threshold": spec.drift_threshold, "window_rows": rows}
        with self.db.session() as s:
            repo = MonitoringRepository(s)
            if drifted:
                if repo.set_alert(name, None, DRIFT_ALERT):
                    features = {f: worst[f] for per in drifted.values() for f in per}
                    repo.add_event(
                        EndpointEvent(
                            endpoint=name,
                            type=RAISED,
                            data={**data, "features": features, "models": drifted},
                        )
                    )
                    log.warning("endpoint %s: drift alert raised: %s", name, features)
            elif judged and repo.set_alert(name, DRIFT_ALERT, None):
                repo.add_event(
                    EndpointEvent(endpoint=name, type=CLEARED, data={**data, "features": worst})
                )
                log.info("endpoint %s: drift alert cleared", name)
            e = EndpointRepository(s).get(name)
            return e.alert if e is not None else None


# --- figures of one model version ---------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """A label and a prediction name the same class: 1, 1.0 and "1" do."""
    return category_key(a) == category_key(b)


def _model_figures(
    info: ModelInfo, rows: list[_Row], total: int, spec: ServingSpec
) -> dict[str, Any]:
    latency = np.asarray([r.latency_ms for r in rows], dtype=np.float64)
    labelled = [r for r in rows if r.labelled]
    regression = info.task == "regression"
    return {
        "model_id": info.model_id,
        "task": info.task,
        "requests": len(rows),
        "share": len(rows) / total if total else None,
        "latency_ms": _percentiles(latency) if len(rows) else None,
        "predictions": _distribution([r.prediction for r in rows], regression),
        "labelled": len(labelled),
        "accuracy": (
            None
            if regression or not labelled
            else sum(_same(r.label, r.prediction) for r in labelled) / len(labelled)
        ),
        "mean_absolute_error": _mae(labelled) if regression else None,
        "fairness": _fairness(info, rows),
        "drift": _drift(info, rows, spec),
    }


def _percentiles(x: np.ndarray) -> dict[str, float]:
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _distribution(predictions: list[Any], regression: bool) -> dict[str, Any]:
    if regression:
        x = np.asarray(
            [p for p in predictions if isinstance(p, int | float) and not isinstance(p, bool)],
            dtype=np.float64,
        )
        if len(x) == 0:
            return {"count": 0}
        p5, p50, p95 = np.percentile(x, [5, 50, 95])
        return {
            "count": len(x),
            "mean": float(x.mean()),
            "p5": float(p5),
            "p50": float(p50),
            "p95": float(p95),
        }
    counts = Counter(str(category_key(p)) for p in predictions)
    top = dict(counts.most_common(_TOP_PREDICTIONS))
    other = sum(counts.values()) - sum(top.values())
    return {"counts": {**top, **({"__other__": other} if other else {})}}


def _mae(labelled: list[_Row]) -> float | None:
    errors = []
    for r in labelled:
        try:
            errors.append(abs(float(r.label) - float(r.prediction)))
        except (TypeError, ValueError):
            continue
    return float(np.mean(errors)) if errors else None


def _fairness(info: ModelInfo, rows: list[_Row]) -> dict[str, Any]:
    """Per sensitive feature of the job's audit that the logged instances carry: per group the
    count, the selection rate (share predicted favourable), and where labelled the accuracy
    and true/false positive rates; demographic parity difference (max - min selection rate)
    and ratio (min / max), and equalized odds difference (the larger gap of the two rates)."""
    out: dict[str, Any] = {}
    selects = info.positive_label is not None and info.task != "regression"
    for feature in info.sensitive_features:
        present = [r for r in rows if feature in r.features]
        if not present:
            continue
        groups: dict[str, list[_Row]] = defaultdict(list)
        for r in present:
            groups[str(category_key(r.features[feature]))].append(r)
        per_group: dict[str, Any] = {}
        for g, members in sorted(groups.items()):
            labelled = [r for r in members if r.labelled]
            tpr, fpr = _error_rates(labelled, info.positive_label) if selects else (None, None)
            per_group[g] = {
                "count": len(members),
                "selection_rate": (
                    sum(_same(r.prediction, info.positive_label) for r in members) / len(members)
                    if selects
                    else None
                ),
                "labelled": len(labelled),
                "accuracy": (
                    sum(_same(r.label, r.prediction) for r in labelled) / len(labelled)
                    if labelled and info.task != "regression"
                    else None
                ),
                "true_positive_rate": tpr,
                "false_positive_rate": fpr,
            }
        rates = [v["selection_rate"] for v in per_group.values() if v["selection_rate"] is not None]
        two = len(rates) >= 2
        both = [
            (v["true_positive_rate"], v["false_positive_rate"])
            for v in per_group.values()
            if v["true_positive_rate"] is not None and v["false_positive_rate"] is not None
        ]
        out[feature] = {
            "groups": per_group,
            "demographic_parity_difference": max(rates) - min(rates) if two else None,
            "demographic_parity_ratio": (
                min(rates) / max(rates) if two and max(rates) > 0 else None
            ),
            # Over the groups whose labelled rows hold both outcomes.
            "equalized_odds_difference": (
                max(
                    max(t for t, _ in both) - min(t for t, _ in both),
                    max(f for _, f in both) - min(f for _, f in both),
                )
                if len(both) >= 2
                else None
            ),
        }
    return out


def _error_rates(labelled: list[_Row], positive: Any) -> tuple[float | None, float | None]:
    """(true positive rate, false positive rate) of labelled rows, favourable = ``positive``;
    None where the labels hold no row of that outcome."""
    predicted = [_same(r.prediction, positive) for r in labelled]
    actual = [_same(r.label, positive) for r in labelled]
    pos = [p for p, a in zip(predicted, actual, strict=True) if a]
    neg = [p for p, a in zip(predicted, actual, strict=True) if not a]
    return (sum(pos) / len(pos) if pos else None, sum(neg) / len(neg) if neg else None)


def _drift(info: ModelInfo, rows: list[_Row], spec: ServingSpec) -> dict[str, Any]:
    """PSI per profiled feature that the logged instances carry (a sensitive feature clients
    never send is left out, not counted as all missing)."""
    least = min_drift_rows(spec)
    base = {"threshold": spec.drift_threshold, "rows": len(rows), "min_rows": least}
    if info.reference is None:
        return {**base, "status": "unknown", "features": {}}
    features: dict[str, Any] = {}
    enough = len(rows) >= least
    for name, profile in (info.reference.get("features") or {}).items():
        if not rows or not any(name in r.features for r in rows):
            continue
        value = psi(profile, [r.features.get(name) for r in rows])
        value_or_none = None if math.isnan(value) else round(value, 6)
        features[name] = {
            "psi": value_or_none,
            "threshold": spec.drift_threshold,
            "drifted": bool(
                enough and value_or_none is not None and value_or_none > spec.drift_threshold
            ),
        }
    if not enough:
        status = "insufficient_rows"
    elif not features:
        status = "unknown"
    else:
        status = "drifted" if any(f["drifted"] for f in features.values()) else "ok"
    return {**base, "status": status, "features": features}


def _samples(fig: dict[str, Any]) -> EndpointSamples:
    out = EndpointSamples(fig["endpoint"], fig["alert"] is not None)
    for m in fig["models"]:
        mid = m["model_id"]
        if m["accuracy"] is not None:
            out.accuracy.append((mid, m["accuracy"]))
        for feature, f in m["fairness"].items():
            for metric in FAIRNESS_METRICS:
                if f[metric] is not None:
                    out.fairness.append((mid, feature, metric, f[metric]))
        for feature, d in m["drift"]["features"].items():
            if d["psi"] is not None:
                out.psi.append((mid, feature, d["psi"]))
    return out
