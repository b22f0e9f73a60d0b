"""The fairness audit document: group metrics, disparities, intervals and pass/fail checks.

One document serves the job audit (``GET /v1/jobs/{id}/audit``), audits of predictions users
bring (``POST /v1/audits``) and the HTML report, which draws every number from it. The numbers
come from the counting engine in :mod:`jobs.fairness` (fairlearn's definitions, checked against
fairlearn in the tests); this module decides what is audited and how it is judged:

* a section per sensitive feature and per intersection of features (``"sex \u00d7 race"``);
* rows whose sensitive value is missing form an explicit ``unknown`` group;
* groups below ``min_group_count`` are flagged, and checks skip or fail them by policy;
* every check states the value it compared (point estimate or interval bound), the limit, the
  groups that decided it and, in a sentence, why it passed or failed.

Outcomes are binary: 1 for the favourable outcome (``positive_label``), 0 for any other class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from jobs.fairness import (
    CLASSIFICATION_METRICS,
    INTERSECTION_SEPARATOR,
    UNKNOWN_GROUP,
    FairnessInputError,
    GroupIndex,
    audit_classification,
    audit_regression,
    confusion_counts,
    encode_groups,
)
from jobs.spec import FOUR_FIFTHS, AuditOptions, DisparityName, GateRule

__all__ = [
    "AUDIT_VERSION",
    "DISPARITIES",
    "FOUR_FIFTHS",
    "GROUP_METRICS",
    "UNKNOWN_GROUP",
    "AuditInputError",
    "binary_outcomes",
    "run_audit",
    "run_regression_audit",
    "section_name",
]

AUDIT_VERSION = 2
GROUP_METRICS = CLASSIFICATION_METRICS

# disparity name -> (engine family, "ratio" | "difference")
DISPARITIES: dict[DisparityName, tuple[str, Literal["ratio", "difference"]]] = {
    "demographic_parity_ratio": ("demographic_parity", "ratio"),
    "demographic_parity_difference": ("demographic_parity", "difference"),
    "equalized_odds_ratio": ("equalized_odds", "ratio"),
    "equalized_odds_difference": ("equalized_odds", "difference"),
    "equal_opportunity_ratio": ("equal_opportunity", "ratio"),
    "equal_opportunity_difference": ("equal_opportunity", "difference"),
    "accuracy_difference": ("accuracy", "difference"),
}
# The group metrics a disparity family compares (equalized odds: the worse of the two).
UNDERLYING: dict[str, tuple[str, ...]] = {
    "demographic_parity": ("selection_rate",),
    "equalized_odds": ("true_positive_rate", "false_positive_rate"),
    "equal_opportunity": ("true_positive_rate",),
    "accuracy": ("accuracy",),
}

GATE_METHOD = (
    "each check compares one disparity of one section with its limit: a ratio must be at "
    "least the threshold, a difference at most. 'thresholds' check the point estimate between "
    "groups; 'gate' rules name the method and whether the point estimate or the pessimistic "
    "end of the bootstrap interval (lower bound of a ratio, upper bound of a difference) is "
    "compared. A value that is undefined (e.g. a ratio whose largest group rate is 0) fails. "
    f"The default, demographic parity ratio >= {FOUR_FIFTHS} (the 'four-fifths rule'), is a "
    "configurable screening convention, not a legal test."
)


class AuditInputError(ValueError):
    """An input cannot be audited. ``input`` names it: ``y_true``, ``y_pred``, ``scores``,
    ``positive_label``, ``intersections`` or ``sensitive:<feature>``."""

    def __init__(self, input: str, message: str) -> None:
        super().__init__(message)
        self.input = input


def section_name(features: list[str] | tuple[str, ...]) -> str:
    return INTERSECTION_SEPARATOR.join(features)


# ---------------------------------------------------------------------------------------------
# outcomes


def _values(input: str, raw: Any) -> np.ndarray:
    """One column as comparable values: integers for whole numbers and booleans, else text."""
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise AuditInputError(input, f"must be one column, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.int64)
    if kind in "iu":
        return arr.astype(np.int64)
    if kind == "f":
        missing = int(np.count_nonzero(np.isnan(arr)))
        if missing:
            raise AuditInputError(input, f"has {missing} missing (NaN) values")
        if np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        return _fractional(input, arr[arr != np.round(arr)].tolist())
    out = np.empty(arr.shape[0], dtype=object)
    missing = 0
    for i, v in enumerate(arr.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            missing += 1
        elif isinstance(v, bool) or (isinstance(v, float) and v.is_integer()):
            out[i] = int(v)
        else:
            out[i] = v
    if missing:
        raise AuditInputError(input, f"has {missing} missing values")
    fractional = [v for v in out.tolist() if isinstance(v, float)]
    if fractional:
        _fractional(input, fractional)
    return out


def _fractional(input: str, found: list[Any]) -> np.ndarray:
    raise AuditInputError(
        input,
        f"must hold class labels, found fractional values {sorted(set(found))[:5]} "
        "(scores belong in a score column)",
    )


def _distinct(values: np.ndarray) -> list[Any]:
    try:
        return sorted(set(values.tolist()))
    except TypeError:  # mixed types: order by text
        return sorted(set(values.tolist()), key=str)


def binary_outcomes(
    labels: Any, predictions: Any, positive_label: str | None
) -> tuple[np.ndarray, np.ndarray, Any]:
    """0/1 outcomes from label and prediction columns, and the favourable value.

    Both columns must hold at most two values, and the predictions only values the labels
    use (or 0/1 against 0/1 labels). The favourable value is ``positive_label`` (matched as
    text), else 1 for 0/1 data, else the last value in sorted order.
    """
    t, p = _values("y_true", labels), _values("y_pred", predictions)
    if t.shape[0] != p.shape[0]:
        raise AuditInputError("y_pred", f"has {p.shape[0]} rows but the labels have {t.shape[0]}")
    if t.shape[0] == 0:
        raise AuditInputError("y_true", "has no rows")
    if (t.dtype.kind == "O") != (p.dtype.kind == "O"):
        # e.g. labels read as text and predictions as numbers: compare both as text.
        t, p = t.astype(str).astype(object), p.astype(str).astype(object)
    for input, arr, what in (("y_pred", p, "predictions"), ("y_true", t, "labels")):
        seen = _distinct(arr)
        if len(seen) > 2:
            raise AuditInputError(
                input,
                f"{what} must be binary (two classes at most) for these metrics; found "
                f"{len(seen)} values: {seen[:5]}",
            )
    classes = _distinct(np.concatenate([t, p]))
    if len(classes) > 2:
        raise AuditInputError(
            "y_pred",
            f"predictions {_distinct(p)} are not the label values {_distinct(t)}",
        )
    if positive_label is not None:
        matches = [c for c in classes if str(c) == positive_label]
        if not matches:
            raise AuditInputError(
                "positive_label", f"'{positive_label}' is not a value of the data: {classes}"
            )
        positive = matches[0]
    elif set(classes) <= {0, 1}:
        positive = 1
    else:
        positive = classes[-1]
    return (t == positive).astype(np.int8), (p == positive).astype(np.int8), positive


def _zero_one(input: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise AuditInputError(input, f"must hold 0/1 outcomes, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise AuditInputError(input, "contains NaN; give 1 for the favourable outcome, else 0")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        found = np.unique(arr[~ok])[:5].tolist()
        raise AuditInputError(input, f"must be binary (1 favourable, 0 not); found {found}")
    return arr.astype(np.int8)


# ---------------------------------------------------------------------------------------------
# sections


def _blank_as_missing(values: Any) -> np.ndarray:
    """Empty or blank text counts as missing: CSV files write a missing value as ''."""
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        blank = np.char.str_len(np.char.strip(arr)) == 0
        if blank.any():
            arr = arr.astype(object)
            arr[blank] = None
    elif arr.dtype.kind == "O":
        blank = np.fromiter(
            (isinstance(v, str) and not v.strip() for v in arr.tolist()), bool, arr.shape[0]
        )
        if blank.any():
            arr = arr.copy()
            arr[blank] = None
    return arr


def _group_indexes(
    options: AuditOptions, sensitive: Mapping[str, Any]
) -> list[tuple[list[str], GroupIndex]]:
    """The groups of every section, each feature checked on its own first."""
    clean = {name: _blank_as_missing(sensitive[name]) for name in options.sensitive_features}
    single: dict[str, GroupIndex] = {}
    for name, values in clean.items():
        try:
            single[name] = encode_groups({name: values}, intersect=False)
        except FairnessInputError as exc:
            raise AuditInputError(f"sensitive:{name}", str(exc)) from exc
    out = []
    for features in options.sections():
        if len(features) == 1:
            out.append((features, single[features[0]]))
            continue
        try:
            groups = encode_groups({n: clean[n] for n in features}, intersect=True)
        except FairnessInputError as exc:
            raise AuditInputError("intersections", str(exc)) from exc
        out.append((features, groups))
    return out


def _section(
    features: list[str],
    groups: GroupIndex,
    t: np.ndarray,
    p: np.ndarray,
    scores: np.ndarray | None,
    options: AuditOptions,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    b = options.bootstrap
    engine = audit_classification(
        t,
        p,
        groups,
        min_group_size=options.min_group_count,
        small_groups="exclude" if options.small_groups == "skip" else "include",
        n_resamples=b.resamples,
        confidence=b.confidence,
        seed=b.seed,
    ).as_dict()
    counts = confusion_counts(t, p, groups)
    mean_scores = None
    if scores is not None:
        sums = np.bincount(groups.codes, weights=scores, minlength=groups.n_groups)
        mean_scores = sums / np.maximum(counts.sum(axis=(1, 2)), 1)
    out_groups = []
    for g, group in enumerate(engine["groups"]):
        (tn, fp), (fn, tp) = counts[g].tolist()
        entry = {"group": group.pop("name"), **group}
        entry["confusion_matrix"] = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
        if mean_scores is not None:
            entry["mean_score"] = float(mean_scores[g])
        out_groups.append(entry)
    unknown = sum(g["count"] for g in out_groups if UNKNOWN_GROUP in g["values"].values())
    section = {
        "name": section_name(features),
        "features": features,
        "intersection": len(features) > 1,
        "groups": out_groups,
        "overall": engine["overall"],
        "overall_intervals": engine["overall_intervals"],
        "disparities": engine["disparities"],
        "unknown_rows": unknown,
        "small_groups": list(engine["small_groups"]["flagged"]),
        "empty_intersections": engine["empty_intersections"],
        "n_empty_intersections": engine["n_empty_intersections"],
    }
    if scores is not None:
        section["overall_mean_score"] = float(scores.mean())
    return section, engine["method"], engine["bootstrap"]


# ---------------------------------------------------------------------------------------------
# checks


def _extremes(section: dict[str, Any], metric: str, method: str, kind: str) -> dict[str, Any]:
    """The groups that set a disparity of one group metric, with their values."""
    rows = [
        (g["group"], g["metrics"][metric], g["count"])
        for g in section["groups"]
        if g["in_disparities"] and g["metrics"].get(metric) is not None
    ]
    overall = section["overall"].get(metric)
    out: dict[str, Any] = {"metric": metric, "overall": overall}
    if not rows:
        return out
    if method == "between_groups":
        lo = min(rows, key=lambda r: r[1])
        hi = max(rows, key=lambda r: r[1])
        out["lowest"] = {"group": lo[0], "value": lo[1], "count": lo[2]}
        out["highest"] = {"group": hi[0], "value": hi[1], "count": hi[2]}
        out["value"] = (lo[1] / hi[1] if hi[1] else None) if kind == "ratio" else hi[1] - lo[1]
        return out
    if overall is None:
        return out
    if kind == "difference":
        far = max(rows, key=lambda r: abs(r[1] - overall))
        out["value"] = abs(far[1] - overall)
    elif overall == 0:
        return out
    else:
        # fairlearn's to_overall ratio: group over overall, inverted where above 1.
        def rel(r: tuple[str, float, int]) -> float:
            q = r[1] / overall
            return 1 / q if q > 1 else q

        far = min(rows, key=rel)
        out["value"] = rel(far)
    out["furthest"] = {"group": far[0], "value": far[1], "count": far[2]}
    return out


def _decided_by(section: dict[str, Any], family: str, method: str, kind: str) -> dict[str, Any]:
    parts = [_extremes(section, m, method, kind) for m in UNDERLYING[family]]
    if len(parts) == 1:
        return parts[0]
    # Equalized odds keeps the TPR side unless the FPR side is strictly worse, as fairlearn.
    tpr, fpr = parts
    tv, fv = tpr.get("value"), fpr.get("value")
    worse = fv is not None and (tv is None or (fv > tv if kind == "difference" else fv < tv))
    chosen = fpr if worse else tpr
    return {**chosen, "other": fpr if chosen is tpr else tpr}


def _fmt(x: float | None) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def _describe(decided: dict[str, Any], method: str) -> str:
    metric = decided["metric"].replace("_", " ")
    if method == "between_groups" and "lowest" in decided:
        lo, hi = decided["lowest"], decided["highest"]
        return (
            f"lowest {metric}: {lo['group']} {_fmt(lo['value'])} (n={lo['count']}); "
            f"highest: {hi['group']} {_fmt(hi['value'])} (n={hi['count']})"
        )
    if "furthest" in decided:
        far = decided["furthest"]
        return (
            f"furthest from the overall {metric} {_fmt(decided['overall'])}: "
            f"{far['group']} {_fmt(far['value'])} (n={far['count']})"
        )
    return f"no group {metric} to compare"


def _check(
    section: dict[str, Any],
    rule: GateRule,
    source: Literal["thresholds", "gate"],
    confidence: float | None,
    policy: str,
    min_count: int,
) -> dict[str, Any]:
    family, kind = DISPARITIES[rule.metric]
    disparity = section["disparities"][family][rule.method]
    point = disparity[kind]
    interval = disparity[f"{kind}_interval"]
    at_least = kind == "ratio"
    if rule.compare == "point":
        value, where = point, "point estimate"
    else:
        value = None if interval is None else interval["low" if at_least else "high"]
        pct = f"{100 * (confidence or 0):g}%"
        where = f"{'lower' if at_least else 'upper'} bound of the {pct} interval"
    decided = _decided_by(section, family, rule.method, kind)
    included = [g for g in section["groups"] if g["in_disparities"]]
    excluded = [g["group"] for g in section["groups"] if not g["in_disparities"]]
    rule_text = ">=" if at_least else "<="
    label = (
        f"{rule.metric.replace('_', ' ')} by {section['name']} ({rule.method.replace('_', ' ')})"
    )
    passed = False
    if policy == "fail" and section["small_groups"]:
        verdict = (
            f"failed: group(s) {section['small_groups']} have fewer than {min_count} rows "
            "and the small-group policy is 'fail'"
        )
    elif len(included) < 2:
        verdict = (
            f"failed: fewer than two groups have at least {min_count} rows, so there is no "
            "disparity to judge"
        )
    elif value is None:
        verdict = "failed: the value is undefined (e.g. no group has a positive rate)"
    else:
        passed = value >= rule.threshold if at_least else value <= rule.threshold
        verdict = "passed" if passed else "failed"
        verdict += (
            f": {_fmt(value)} {'meets' if passed else 'misses'} {rule_text} {rule.threshold:g}"
        )
    described = _describe(decided, rule.method)
    reason = f"{label}, {where}: {verdict}. {described[:1].upper()}{described[1:]}."
    if excluded and policy == "skip":
        reason += f" Left out as small (< {min_count} rows): {', '.join(excluded)}."
    return {
        "feature": section["name"],
        "features": section["features"],
        "metric": rule.metric,
        "method": rule.method,
        "compare": rule.compare,
        "source": source,
        "rule": rule_text,
        "threshold": rule.threshold,
        "value": value,
        "point": point,
        "interval": interval,
        "confidence": confidence if rule.compare == "interval" else None,
        "passed": passed,
        "decided_by": decided,
        "excluded_groups": excluded if policy == "skip" else [],
        "reason": reason,
    }


def rules(options: AuditOptions) -> list[tuple[GateRule, Literal["thresholds", "gate"]]]:
    """Every rule checked: the thresholds (point estimates between groups), then the gate."""
    out: list[tuple[GateRule, Literal["thresholds", "gate"]]] = [
        (
            GateRule(metric=metric, threshold=limit, method="between_groups", compare="point"),
            "thresholds",
        )
        for metric, limit in options.thresholds.items()
    ]
    out += [(rule, "gate") for rule in options.gate]
    return out


# ---------------------------------------------------------------------------------------------
# the document


def run_audit(
    y_true: Any,
    y_pred: Any,
    sensitive: Mapping[str, Any],
    options: AuditOptions,
    *,
    positive_label: Any,
    scores: Any = None,
) -> dict[str, Any]:
    """The audit document of binary outcomes (1 = ``positive_label``) by ``sensitive``.

    ``sensitive`` maps each of ``options.sensitive_features`` to one value per row (None or
    NaN for missing). Raises :class:`AuditInputError` naming the input that cannot be audited.
    """
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise AuditInputError("y_pred", f"shape {p.shape} does not match the labels' {t.shape}")
    if t.shape[0] == 0:
        raise AuditInputError("y_true", "no rows to audit")
    for name in options.sensitive_features:
        if name not in sensitive:
            raise AuditInputError(f"sensitive:{name}", f"no values given for '{name}'")
        if len(sensitive[name]) != t.shape[0]:
            raise AuditInputError(
                f"sensitive:{name}",
                f"'{name}' has {len(sensitive[name])} rows but the labels have {t.shape[0]}",
            )
    score_arr: np.ndarray | None = None
    if scores is not None:
        score_arr = np.asarray(scores, dtype=np.float64)
        if score_arr.shape != t.shape or not np.isfinite(score_arr).all():
            raise AuditInputError("scores", "scores must be one finite number per row")
    t, p = _zero_one("y_true", t), _zero_one("y_pred", p)

    sections: dict[str, Any] = {}
    method: dict[str, Any] = {}
    bootstrap: dict[str, Any] | None = None
    for features, groups in _group_indexes(options, sensitive):
        section, method, bootstrap = _section(features, groups, t, p, score_arr, options)
        sections[section["name"]] = section

    b = options.bootstrap
    confidence = b.confidence if b.resamples else None
    checks = [
        _check(section, rule, source, confidence, options.small_groups, options.min_group_count)
        for section in sections.values()
        for rule, source in rules(options)
    ]
    return {
        "version": AUDIT_VERSION,
        "kind": "classification",
        "positive_label": positive_label,
        "num_rows": int(t.shape[0]),
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "features": sections,
        "settings": {
            "sections": options.sections(),
            "thresholds": dict(options.thresholds),
            "gate": [r.model_dump(mode="json") for r in options.gate],
            "bootstrap": b.model_dump(mode="json"),
            "min_group_count": options.min_group_count,
            "small_groups": options.small_groups,
        },
        "bootstrap": bootstrap,
        "method": {
            **method,
            "outcome": "binary: 1 where the class is the favourable outcome "
            f"({positive_label!r}), 0 for every other class",
            # The engine words this in its own include/exclude terms; the spec's are these.
            "small_groups": f"groups below min_group_count ({options.min_group_count} rows) "
            f"are flagged 'small'; policy '{options.small_groups}': "
            + (
                "they are left out of the disparities the checks judge (overall still counts "
                "every row)"
                if options.small_groups == "skip"
                else "they stay in the disparities, and every check of their section fails"
            ),
            "unknown_group": "rows missing a sensitive value (null, NaN or blank text) form "
            f"the group '{UNKNOWN_GROUP}'",
            "checks": GATE_METHOD,
        },
    }


def run_regression_audit(
    y_true: Any, y_pred: Any, sensitive: Mapping[str, Any], options: AuditOptions
) -> dict[str, Any]:
    """Per-group errors of a regression model (count, MAE, RMSE, mean prediction and mean
    target, with bootstrap intervals) for each sensitive feature and intersection, and the
    spread of MAE and mean prediction between groups.

    Informational: the gates are defined on favourable outcomes, which a regression has not,
    so ``passed`` is None and there are no checks.
    """
    b = options.bootstrap
    sections: dict[str, Any] = {}
    for features in options.sections():
        try:
            index = encode_groups(
                {f: _blank_as_missing(sensitive[f]) for f in features}, intersect=len(features) > 1
            )
            result = audit_regression(
                y_true,
                y_pred,
                index,
                min_group_size=options.min_group_count,
                small_groups="exclude" if options.small_groups == "skip" else "include",
                n_resamples=b.resamples,
                confidence=b.confidence,
                seed=b.seed,
            )
        except FairnessInputError as exc:
            raise AuditInputError(f"sensitive:{features[0]}", str(exc)) from exc
        sections[section_name(features)] = result.as_dict()
    return {
        "version": AUDIT_VERSION,
        "kind": "regression",
        "num_rows": len(y_true),
        "passed": None,
        "checks": [],
        "features": sections,
        "note": "a regression audit reports errors by group; the disparity gates apply to "
        "classification outcomes, so nothing here passes or fails",
    }
