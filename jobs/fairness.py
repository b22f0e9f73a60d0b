"""Fast fairness audit engine: group metrics, disparities and bootstrap intervals from counts.

Every confusion-matrix metric that fairlearn's MetricFrame reports is a function of the
per-(group, label, prediction) counts, so one ``np.bincount`` pass replaces MetricFrame's
per-group Python calls, and a bootstrap resample of the rows becomes one multinomial draw over
those counts. Point estimates and disparities follow fairlearn's definitions exactly (see the
``method`` entry of each document); regression audits use weighted bincounts and a Poisson
bootstrap.

    groups = encode_groups({"sex": sex, "race": race}, intersect=True)
    doc = audit_classification(y_true, y_pred, groups, n_resamples=200, seed=0).as_dict()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

UNKNOWN_GROUP = "unknown"
INTERSECTION_SEPARATOR = " \u00d7 "  # multiplication sign
SmallGroups = Literal["include", "exclude"]

CLASSIFICATION_METRICS = (
    "base_rate",
    "selection_rate",
    "accuracy",
    "precision",
    "true_positive_rate",
    "false_positive_rate",
    "false_negative_rate",
)
REGRESSION_METRICS = ("mae", "rmse", "mean_prediction", "mean_target")

# Rows per chunk in the passes over the data: the temporaries of a chunk stay a few MiB, so
# peak memory is the group codes plus a constant, not a multiple of the input.
_ROW_CHUNK = 1 << 18
# Poisson weights drawn per block in the regression bootstrap (resamples x rows).
_WEIGHT_CELLS = 1 << 18
_RESAMPLE_CHUNK = 512
# Past this many empty intersections only a prefix is listed; the total is always given.
_MAX_LISTED_EMPTY = 10_000

_METHOD_COMMON = {
    "between_groups": "difference: largest minus smallest group value; ratio: smallest over "
    "largest (fairlearn MetricFrame.difference/ratio, method='between_groups')",
    "to_overall": "difference: largest |group - overall|; ratio: smallest group/overall, "
    "inverted where above 1 (fairlearn method='to_overall'); reference: the metric on all rows",
    "undefined_group_values": "NaN group values (a group with no rows in a resample) are "
    "skipped by the min/max, as pandas does in fairlearn",
}


class FairnessInputError(ValueError):
    """The inputs cannot be audited: the message says which input and why."""


@dataclass(frozen=True)
class GroupIndex:
    """One partition of the rows into groups.

    ``codes[i]`` is the group of row ``i``; group ``g`` is ``names[g]`` and, per sensitive
    feature, has the label ``values[g][k]`` of ``features[k]``.
    """

    features: tuple[str, ...]
    codes: np.ndarray
    names: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]
    empty_intersections: tuple[str, ...] = ()
    n_empty_intersections: int = 0

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @property
    def n_rows(self) -> int:
        return int(self.codes.shape[0])


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """A disparity measured one way; ``ratio`` is None where no ratio is defined."""

    difference: float
    ratio: float | None
    difference_interval: Interval | None
    ratio_interval: Interval | None


@dataclass(frozen=True)
class Disparity:
    metric: str
    between_groups: Comparison
    to_overall: Comparison


@dataclass(frozen=True)
class GroupResult:
    name: str
    values: dict[str, str]
    count: int
    small: bool
    in_disparities: bool
    metrics: dict[str, float]
    intervals: dict[str, Interval]
    # Rates whose denominator is zero in this group; they are reported as 0 like fairlearn.
    undefined: tuple[str, ...]


@dataclass(frozen=True)
class SmallGroupPolicy:
    min_group_size: int
    policy: SmallGroups
    flagged: tuple[str, ...]


@dataclass(frozen=True)
class Bootstrap:
    n_resamples: int
    confidence: float
    seed: int | None
    method: str


class _Document:
    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: NaN and infinities become None."""
        result: dict[str, Any] = _json_ready(self)
        return result

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.as_dict(), allow_nan=False, ensure_ascii=False, **kwargs)


@dataclass(frozen=True)
class _Audit(_Document):
    num_rows: int
    features: tuple[str, ...]
    groups: tuple[GroupResult, ...]
    overall: dict[str, float]
    overall_intervals: dict[str, Interval]
    disparities: dict[str, Disparity]
    empty_intersections: tuple[str, ...]
    n_empty_intersections: int
    small_groups: SmallGroupPolicy
    bootstrap: Bootstrap | None
    method: dict[str, str]
    kind: str


@dataclass(frozen=True)
class ClassificationAudit(_Audit):
    kind: str = "classification"


@dataclass(frozen=True)
class RegressionAudit(_Audit):
    kind: str = "regression"


def _json_ready(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _json_ready(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_ready(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None
    return x


# ---------------------------------------------------------------------------------------------
# groups


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        # pd.NA and similar markers refuse a truth value: they only ever stand for "missing".
        return True


def _label(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _factorize(name: str, raw: Any) -> tuple[np.ndarray, list[str], int]:
    """Codes (-1 for missing), the label of each code in sorted order, and the missing count."""
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise FairnessInputError(
            f"sensitive feature {name!r} must be one-dimensional, got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise FairnessInputError(f"sensitive feature {name!r} is empty: no rows to audit")
    kind = arr.dtype.kind
    if kind in "biu":
        codes, uniq = _factorize_integers(arr)
        if kind == "b":
            uniq = uniq.astype(bool)
        return codes, [_label(v) for v in uniq.tolist()], 0
    if kind == "f":
        missing = np.isnan(arr)
        n_missing = int(np.count_nonzero(missing))
        if n_missing == 0:
            uniq, inverse = np.unique(arr, return_inverse=True)
            return inverse.astype(np.int64, copy=False), [_label(v) for v in uniq.tolist()], 0
        codes = np.full(arr.shape[0], -1, dtype=np.int64)
        present = ~missing
        uniq, inverse = np.unique(arr[present], return_inverse=True)
        codes[present] = inverse
        return codes, [_label(v) for v in uniq.tolist()], n_missing
    if kind in "US":
        few = _factorize_few(arr)
        if few is not None:
            codes, uniq = few
            return codes, [_label(v) for v in uniq.tolist()], 0
        uniq, inverse = np.unique(arr, return_inverse=True)
        return inverse.astype(np.int64, copy=False), [_label(v) for v in uniq.tolist()], 0
    return _factorize_objects(arr.astype(object, copy=False))


def _factorize_integers(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = int(arr.min()), int(arr.max())
    span = hi - lo + 1
    if span <= max(4 * arr.shape[0], 1 << 16) and lo > -(1 << 62) and hi < 1 << 62:
        # A bincount over the value range factorizes in O(N) with one N-sized buffer, where
        # np.unique would sort and allocate several.
        codes = arr.astype(np.int64)
        codes -= lo
        present = np.bincount(codes, minlength=span) > 0
        remap = np.cumsum(present) - 1
        np.take(remap, codes, out=codes)
        return codes, np.flatnonzero(present) + lo
    uniq, inverse = np.unique(arr, return_inverse=True)
    return inverse.astype(np.int64, copy=False), uniq


def _factorize_few(arr: np.ndarray, limit: int = 32) -> tuple[np.ndarray, np.ndarray] | None:
    """Factorize by one vectorised comparison per distinct value; None past ``limit`` values.

    Sensitive features rarely have more than a handful of values, and a few equality passes
    over fixed-width strings cost far less than the sort inside np.unique.
    """
    n = arr.shape[0]
    codes = np.full(n, -1, dtype=np.int64)
    seen: list[Any] = []
    start = 0
    while True:
        todo = codes[start:] < 0
        if not todo.any():
            break
        if len(seen) == limit:
            return None
        start += int(todo.argmax())
        value = arr[start]
        codes[arr == value] = len(seen)
        seen.append(value)
    uniq = np.asarray(seen, dtype=arr.dtype)
    order = np.argsort(uniq, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    np.take(rank, codes, out=codes)
    return codes, uniq[order]


def _factorize_objects(arr: np.ndarray) -> tuple[np.ndarray, list[str], int]:
    # Values may be any Python objects, mixed and unorderable, so they are hashed once each
    # (or keyed by their label when unhashable) and ordered by label afterwards.
    lookup: dict[Any, int] = {}
    labels: list[str] = []
    label_code: dict[str, int] = {}

    def code_of(value: object) -> int:
        try:
            code = lookup.get(value)
            key: Any = value
        except TypeError:
            key = ("unhashable", _label(value))
            code = lookup.get(key)
        if code is None:
            if _is_missing(value):
                code = -1
            else:
                text = _label(value)
                code = label_code.setdefault(text, len(labels))
                if code == len(labels):
                    labels.append(text)
            with contextlib.suppress(TypeError):
                lookup[key] = code
        return code

    codes = np.fromiter(map(code_of, arr), dtype=np.int64, count=arr.shape[0])
    order = sorted(range(len(labels)), key=labels.__getitem__)
    remap = np.empty(len(labels) + 1, dtype=np.int64)
    remap[np.asarray(order, dtype=np.int64)] = np.arange(len(labels))
    remap[-1] = -1
    np.take(remap, codes, out=codes)
    n_missing = int(np.count_nonzero(codes < 0))
    return codes, [labels[i] for i in order], n_missing


def _encode_feature(name: str, raw: Any) -> tuple[np.ndarray, list[str]]:
    codes, labels, n_missing = _factorize(name, raw)
    if n_missing == codes.shape[0]:
        raise FairnessInputError(
            f"sensitive feature {name!r}: every row is missing (None/NaN), so there are no "
            "groups to compare"
        )
    if n_missing:
        # A literal value "unknown" would share the group of the missing rows; merging them is
        # the only outcome that keeps group names unique.
        if UNKNOWN_GROUP in labels:
            codes[codes < 0] = labels.index(UNKNOWN_GROUP)
        else:
            codes[codes < 0] = len(labels)
            labels.append(UNKNOWN_GROUP)
    if len(labels) < 2:
        raise FairnessInputError(
            f"sensitive feature {name!r} has a single group ({labels[0]!r}); a disparity "
            "needs at least two"
        )
    return codes, labels


def encode_groups(features: Mapping[str, Any], intersect: bool) -> GroupIndex:
    """Per-row group codes and group names for the sensitive ``features``.

    Values may be any objects; None and NaN form an explicit ``"unknown"`` group. With several
    features, ``intersect=True`` makes each combination present in the data a group (named like
    ``"Female \u00d7 Black"``) and lists the combinations of seen values without rows in
    ``empty_intersections``; ``intersect=False`` needs exactly one feature (encode each
    feature in its own call to audit them separately).
    """
    if not features:
        raise FairnessInputError("no sensitive features given")
    if len(features) > 1 and not intersect:
        raise FairnessInputError(
            f"{len(features)} sensitive features with intersect=False: encode each feature in "
            "its own call, or pass intersect=True for their intersections"
        )
    names = tuple(features)
    encoded = [_encode_feature(name, features[name]) for name in names]
    lengths = {name: codes.shape[0] for name, (codes, _) in zip(names, encoded, strict=True)}
    if len(set(lengths.values())) > 1:
        raise FairnessInputError(f"sensitive features differ in length: {lengths}")
    if len(encoded) == 1:
        codes, labels = encoded[0]
        return GroupIndex(names, codes, tuple(labels), tuple((v,) for v in labels))
    return _intersect(names, encoded)


def _intersect(names: tuple[str, ...], encoded: list[tuple[np.ndarray, list[str]]]) -> GroupIndex:
    sizes = [len(labels) for _, labels in encoded]
    space = math.prod(sizes)
    if space >= 1 << 62:
        raise FairnessInputError(
            f"{space} possible intersections of {names}: too many to index; audit fewer features"
        )
    # The first feature's codes become the combined codes in place: no further N-sized buffer.
    combined, _ = encoded[0]
    for codes, labels in encoded[1:]:
        combined *= len(labels)
        combined += codes
    if space <= max(4 * combined.shape[0], 1 << 16):
        present = np.bincount(combined, minlength=space) > 0
        combos = np.flatnonzero(present)
        remap = np.cumsum(present) - 1
        np.take(remap, combined, out=combined)
        codes = combined
        absent = np.flatnonzero(~present)[:_MAX_LISTED_EMPTY].tolist()
    else:
        combos, inverse = np.unique(combined, return_inverse=True)
        codes = inverse.astype(np.int64, copy=False)
        absent = _first_absent(combos.tolist(), space, _MAX_LISTED_EMPTY)

    def unravel(flat: int) -> tuple[str, ...]:
        parts = np.unravel_index(flat, sizes)
        return tuple(encoded[k][1][int(parts[k])] for k in range(len(sizes)))

    values = tuple(unravel(int(c)) for c in combos)
    return GroupIndex(
        features=names,
        codes=codes,
        names=tuple(INTERSECTION_SEPARATOR.join(v) for v in values),
        values=values,
        empty_intersections=tuple(INTERSECTION_SEPARATOR.join(unravel(f)) for f in absent),
        n_empty_intersections=space - len(combos),
    )


def _first_absent(present: list[int], space: int, limit: int) -> list[int]:
    """The first ``limit`` values of range(space) missing from the sorted ``present``.

    Walks the gaps so that a huge, sparse space is never materialised.
    """
    out: list[int] = []
    expected = 0
    for value in [*present, space]:
        while expected < value and len(out) < limit:
            out.append(expected)
            expected += 1
        if len(out) == limit:
            break
        expected = value + 1
    return out


# ---------------------------------------------------------------------------------------------
# validation


def _check_options(
    n_rows: int,
    groups: GroupIndex,
    min_group_size: int,
    small_groups: str,
    n_resamples: int,
    confidence: float,
) -> None:
    if n_rows == 0:
        raise FairnessInputError("y_true and y_pred are empty: no rows to audit")
    if groups.n_rows != n_rows:
        raise FairnessInputError(
            f"the sensitive features have {groups.n_rows} rows but y_true and y_pred {n_rows}"
        )
    if small_groups not in ("include", "exclude"):
        raise FairnessInputError(
            f"small_groups must be 'include' or 'exclude', got {small_groups!r}"
        )
    if min_group_size < 0:
        raise FairnessInputError(f"min_group_size must be >= 0, got {min_group_size}")
    if n_resamples < 0:
        raise FairnessInputError(f"n_resamples must be >= 0, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise FairnessInputError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.ndim != 1:
            raise FairnessInputError(f"{name} must be one-dimensional, got shape {a.shape}")
    if t.shape[0] != p.shape[0]:
        raise FairnessInputError(
            f"y_true has {t.shape[0]} rows but y_pred has {p.shape[0]}: they must match"
        )
    return t, p


def _as_binary(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` as 0/1 integers (no copy for integer or bool input)."""
    if a.dtype.kind == "b":
        return a
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo >= 0 and hi <= 1:
            # uint64 does not add into the int64 cell keys in place.
            return a.astype(np.int8) if a.dtype == np.uint64 else a
        return _not_binary(name, a)
    if a.dtype.kind == "f":
        if np.isnan(a).any():
            raise FairnessInputError(
                f"{name} contains NaN; give 1 for the favourable outcome and 0 otherwise"
            )
        if np.count_nonzero(a == 1) + np.count_nonzero(a == 0) == a.shape[0]:
            return (a == 1).view(np.int8)
        return _not_binary(name, a)
    try:
        as_float = a.astype(np.float64)
    except (TypeError, ValueError):
        return _not_binary(name, a)
    return _as_binary(name, as_float)


def _not_binary(name: str, a: np.ndarray) -> np.ndarray:
    shown: list[Any] = []
    for v in a.tolist():
        if v not in (0, 1) and v not in shown:
            shown.append(v)
            if len(shown) == 5:
                break
    raise FairnessInputError(
        f"{name} must be binary: 1 for the favourable outcome, 0 otherwise; found {shown}"
    )


def _as_real(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise FairnessInputError(f"{name} must hold numbers, got dtype {a.dtype}") from e
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise FairnessInputError(f"{name} contains NaN or infinite values")
    return a


# ---------------------------------------------------------------------------------------------
# metrics


def _ratio(num: np.ndarray, den: np.ndarray, rows: np.ndarray) -> np.ndarray:
    # sklearn's confusion_matrix(normalize="true") and precision_score(zero_division=0), which
    # fairlearn uses, turn 0/0 into 0; only a group with no rows at all (possible inside a
    # resample) has no value.
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den == 0, 0.0, num / den)
    return np.where(rows == 0, np.nan, out)


def _classification_rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of counts shaped (..., 2, 2) indexed [y_true, y_pred]."""
    c = counts.astype(np.float64)
    tn, fp, fn, tp = c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]
    n = tn + fp + fn + tp
    pos, neg, sel = fn + tp, tn + fp, fp + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "base_rate": pos / n,
            "selection_rate": sel / n,
            "accuracy": (tp + tn) / n,
            "precision": _ratio(tp, sel, n),
            "true_positive_rate": _ratio(tp, pos, n),
            "false_positive_rate": _ratio(fp, neg, n),
            "false_negative_rate": _ratio(fn, pos, n),
        }


def _regression_stats(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of sums shaped (..., 5): weight, sum |e|, sum e^2, sum prediction, sum target."""
    w = sums[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "mae": sums[..., 1] / w,
            "rmse": np.sqrt(sums[..., 2] / w),
            "mean_prediction": sums[..., 3] / w,
            "mean_target": sums[..., 4] / w,
        }


def _spread(values: np.ndarray, overall: np.ndarray) -> dict[str, np.ndarray]:
    """fairlearn's difference/ratio, both methods, over the last axis of ``values``."""
    shape = values.shape[:-1]
    if values.shape[-1] == 0:
        nan = np.full(shape, np.nan)
        return {"bg_diff": nan, "bg_ratio": nan, "to_diff": nan, "to_ratio": nan}
    # fmax/fmin skip NaN like pandas' max/min, without the all-NaN warnings of nanmax.
    hi = np.fmax.reduce(values, axis=-1)
    lo = np.fmin.reduce(values, axis=-1)
    ref = overall[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        bg_ratio = lo / hi
        rel = values / ref
        # fairlearn inverts the quotient (1 / (g/o)) rather than computing o/g.
        rel = np.where(rel > 1, 1 / rel, rel)
    return {
        "bg_diff": hi - lo,
        "bg_ratio": bg_ratio,
        "to_diff": np.fmax.reduce(np.abs(values - ref), axis=-1),
        "to_ratio": np.fmin.reduce(rel, axis=-1),
    }


def _classification_disparities(
    rates: dict[str, np.ndarray], overall: dict[str, np.ndarray], included: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    s = {
        m: _spread(rates[m][..., included], overall[m])
        for m in ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")
    }
    tpr, fpr = s["true_positive_rate"], s["false_positive_rate"]
    # fairlearn takes Python's max()/min() over the (TPR, FPR) pair: the TPR value is kept
    # unless the FPR value compares strictly beyond it, so a NaN TPR disparity propagates while
    # a NaN FPR disparity is ignored. np.where with the same comparison reproduces that.
    odds = {
        "bg_diff": np.where(fpr["bg_diff"] > tpr["bg_diff"], fpr["bg_diff"], tpr["bg_diff"]),
        "to_diff": np.where(fpr["to_diff"] > tpr["to_diff"], fpr["to_diff"], tpr["to_diff"]),
        "bg_ratio": np.where(fpr["bg_ratio"] < tpr["bg_ratio"], fpr["bg_ratio"], tpr["bg_ratio"]),
        "to_ratio": np.where(fpr["to_ratio"] < tpr["to_ratio"], fpr["to_ratio"], tpr["to_ratio"]),
    }
    return {
        "demographic_parity": s["selection_rate"],
        "equalized_odds": odds,
        "equal_opportunity": tpr,
        "accuracy": s["accuracy"],
    }


_CLASSIFICATION_DISPARITY_METRIC = {
    "demographic_parity": "selection_rate",
    "equalized_odds": "worst of true_positive_rate and false_positive_rate",
    "equal_opportunity": "true_positive_rate",
    "accuracy": "accuracy",
}


def _regression_disparities(
    stats: dict[str, np.ndarray], overall: dict[str, np.ndarray], included: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    return {m: _spread(stats[m][..., included], overall[m]) for m in ("mae", "mean_prediction")}


# ---------------------------------------------------------------------------------------------
# counting and resampling


def _confusion_counts(
    codes: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_groups: int
) -> np.ndarray:
    cells = np.zeros(n_groups * 4, dtype=np.int64)
    for start in range(0, codes.shape[0], _ROW_CHUNK):
        stop = start + _ROW_CHUNK
        t = y_true[start:stop]
        key = codes[start:stop] * 4
        # Added in place (twice for 2*y_true) so no temporary array per term is allocated.
        key += t
        key += t
        key += y_pred[start:stop]
        cells += np.bincount(key, minlength=n_groups * 4)
    return cells.reshape(n_groups, 2, 2)


def confusion_counts(y_true: Any, y_pred: Any, groups: GroupIndex) -> np.ndarray:
    """Rows per (group, label, prediction): shape (groups, 2, 2), indexed [g, y_true, y_pred].

    The counts every classification metric is computed from; reports draw confusion matrices
    from them.
    """
    t_raw, p_raw = _pair(y_true, y_pred)
    _check_options(t_raw.shape[0], groups, 0, "include", 0, 0.5)
    t, p = _as_binary("y_true", t_raw), _as_binary("y_pred", p_raw)
    return _confusion_counts(groups.codes, t, p, groups.n_groups)


def _multinomial_counts(counts: np.ndarray, n_resamples: int, seed: int | None) -> np.ndarray:
    # Resampling N rows with replacement draws each row's (group, label, prediction) cell with
    # probability cell_count / N, independently N times, so the resampled cell counts are
    # exactly Multinomial(N, cell_counts / N). This is the exact nonparametric bootstrap
    # distribution of the counts, and so of every metric computed from them, not an
    # approximation; it costs one draw over G*4 cells per resample instead of a pass over rows.
    flat = counts.reshape(-1)
    n = int(flat.sum())
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, flat / n, size=n_resamples)
    return draws.reshape((n_resamples, *counts.shape))


def _regression_columns(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Rows of weight 1, |e|, e^2, prediction, target: shape (5, n), each row contiguous."""
    out = np.empty((5, y_true.shape[0]))
    err = y_pred - y_true
    out[0] = 1.0
    np.abs(err, out=out[1])
    np.multiply(err, err, out=out[2])
    out[3] = y_pred
    out[4] = y_true
    return out


def _regression_sums(
    codes: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_groups: int
) -> np.ndarray:
    sums = np.zeros((n_groups, 5))
    for start in range(0, codes.shape[0], _ROW_CHUNK):
        stop = start + _ROW_CHUNK
        cols = _regression_columns(y_true[start:stop], y_pred[start:stop])
        c = codes[start:stop]
        for k in range(5):
            sums[:, k] += np.bincount(c, weights=cols[k], minlength=n_groups)
    return sums


def _poisson_weights(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    # Poissonization: T ~ Poisson(m) draws spread uniformly over m cells leave iid Poisson(1)
    # counts in the cells, exactly; uniform integers plus a bincount are several times cheaper
    # than m calls into the Poisson sampler.
    m = shape[0] * shape[1]
    total = int(rng.poisson(m))
    dtype = np.uint32 if m < 1 << 32 else np.int64
    hits = rng.integers(0, m, size=total, dtype=dtype)
    return np.bincount(hits, minlength=m).reshape(shape).astype(np.float64)


def _poisson_sums(
    codes: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_groups: int,
    n_resamples: int,
    seed: int | None,
) -> np.ndarray:
    """Per-resample weighted sums, shape (n_resamples, n_groups, 5).

    Regression metrics are not functions of a few counts, so each resample needs a weight per
    row. The Poisson bootstrap gives every row an independent Poisson(1) weight instead of a
    Multinomial(N, 1/N) count. It approximates the multinomial (ordinary) bootstrap for large N:
    multinomial counts are exactly such Poisson weights conditioned on summing to N, and the
    Poisson total only varies by about sqrt(N). Independent weights let rows and resamples be
    processed in blocks, never as an N x n_resamples array.
    """
    rng = np.random.default_rng(seed)
    # Blocks no larger than the data itself keep small inputs from paying a fixed buffer.
    cells = min(_WEIGHT_CELLS, max(codes.shape[0], 4096))
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=n_groups))])
    sums = np.zeros((n_resamples, n_groups, 5))
    for r0 in range(0, n_resamples, _RESAMPLE_CHUNK):
        r1 = min(r0 + _RESAMPLE_CHUNK, n_resamples)
        rows = max(1, cells // (r1 - r0))
        for g in range(n_groups):
            # Rows sorted by group make each block one group's rows, so a block's sums for all
            # its resamples are one small matrix product: weights (resamples x rows) @ columns.
            for s0 in range(int(bounds[g]), int(bounds[g + 1]), rows):
                idx = order[s0 : min(s0 + rows, int(bounds[g + 1]))]
                cols = _regression_columns(y_true[idx], y_pred[idx])
                weights = _poisson_weights(rng, (r1 - r0, idx.shape[0]))
                sums[r0:r1, g, :] += weights @ cols.T
    return sums


def _quantiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = 1.0 - confidence
    with warnings.catch_warnings():
        # A statistic undefined in every resample (a group never drawn) has no interval.
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanquantile(samples, [alpha / 2, 1 - alpha / 2], axis=0)
    return q[0], q[1]


# ---------------------------------------------------------------------------------------------
# documents


def _interval(low: np.ndarray, high: np.ndarray, index: Any = ()) -> Interval:
    return Interval(float(low[index]), float(high[index]))


def _build_disparities(
    point: dict[str, dict[str, np.ndarray]],
    boot: dict[str, dict[str, np.ndarray]] | None,
    confidence: float,
    metric_names: dict[str, str],
    with_ratio: bool,
) -> dict[str, Disparity]:
    out: dict[str, Disparity] = {}
    for name, p in point.items():
        iv: dict[str, Interval | None] = dict.fromkeys(p)
        if boot is not None:
            for key, samples in boot[name].items():
                if with_ratio or key.endswith("_diff"):
                    iv[key] = _interval(*_quantiles(samples, confidence))
        bg, to = (
            Comparison(
                difference=float(p[f"{prefix}_diff"]),
                ratio=float(p[f"{prefix}_ratio"]) if with_ratio else None,
                difference_interval=iv[f"{prefix}_diff"],
                ratio_interval=iv[f"{prefix}_ratio"],
            )
            for prefix in ("bg", "to")
        )
        out[name] = Disparity(metric_names[name], bg, to)
    return out


def _build_groups(
    groups: GroupIndex,
    sizes: np.ndarray,
    included: np.ndarray,
    min_group_size: int,
    point: dict[str, np.ndarray],
    boot: dict[str, np.ndarray] | None,
    confidence: float,
    undefined: list[tuple[str, ...]],
) -> tuple[GroupResult, ...]:
    bounds = {m: _quantiles(s, confidence) for m, s in boot.items()} if boot is not None else {}
    return tuple(
        GroupResult(
            name=groups.names[g],
            values=dict(zip(groups.features, groups.values[g], strict=True)),
            count=int(sizes[g]),
            small=bool(sizes[g] < min_group_size),
            in_disparities=bool(included[g]),
            metrics={m: float(v[g]) for m, v in point.items()},
            intervals={m: _interval(lo, hi, g) for m, (lo, hi) in bounds.items()},
            undefined=undefined[g],
        )
        for g in range(groups.n_groups)
    )


def _names(groups: GroupIndex, mask: np.ndarray) -> tuple[str, ...]:
    return tuple(groups.names[g] for g in np.flatnonzero(mask).tolist())


def _method(extra: dict[str, str], n_resamples: int, bootstrap: str, policy: str) -> dict[str, str]:
    method = {**_METHOD_COMMON, **extra}
    method["small_groups"] = (
        f"groups below min_group_size are flagged 'small'; policy {policy!r}: "
        + (
            "they take part in disparities"
            if policy == "include"
            else "they are left out of disparities (overall still counts every row)"
        )
    )
    if n_resamples:
        method["intervals"] = bootstrap
    return method


def audit_classification(
    y_true: Any,
    y_pred: Any,
    groups: GroupIndex,
    *,
    min_group_size: int = 30,
    small_groups: SmallGroups = "include",
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int | None = None,
) -> ClassificationAudit:
    """Group metrics, disparities and bootstrap intervals for a binary outcome.

    ``y_true`` and ``y_pred`` hold 1 for the favourable outcome and 0 otherwise. Groups with
    fewer than ``min_group_size`` rows are flagged; ``small_groups="include"`` (the default)
    keeps them in the disparities, ``"exclude"`` leaves them out. ``n_resamples=0`` skips the
    bootstrap.
    """
    t_raw, p_raw = _pair(y_true, y_pred)
    _check_options(t_raw.shape[0], groups, min_group_size, small_groups, n_resamples, confidence)
    t, p = _as_binary("y_true", t_raw), _as_binary("y_pred", p_raw)

    counts = _confusion_counts(groups.codes, t, p, groups.n_groups)
    sizes = counts.sum(axis=(1, 2))
    small = sizes < min_group_size
    included = ~small if small_groups == "exclude" else np.ones_like(small)
    rates = _classification_rates(counts)
    overall = _classification_rates(counts.sum(axis=0))
    disparities = _classification_disparities(rates, overall, included)

    boot_rates: dict[str, np.ndarray] | None = None
    boot_overall: dict[str, np.ndarray] | None = None
    boot_disp: dict[str, dict[str, np.ndarray]] | None = None
    if n_resamples:
        draws = _multinomial_counts(counts, n_resamples, seed)
        boot_rates = _classification_rates(draws)
        boot_overall = _classification_rates(draws.sum(axis=1))
        boot_disp = _classification_disparities(boot_rates, boot_overall, included)

    pos, neg, sel = counts[:, 1, :].sum(1), counts[:, 0, :].sum(1), counts[:, :, 1].sum(1)
    undefined = [
        tuple(
            m
            for m, den in (
                ("precision", sel[g]),
                ("true_positive_rate", pos[g]),
                ("false_positive_rate", neg[g]),
                ("false_negative_rate", pos[g]),
            )
            if den == 0
        )
        for g in range(groups.n_groups)
    ]
    overall_iv = (
        {m: _interval(*_quantiles(s, confidence)) for m, s in boot_overall.items()}
        if boot_overall is not None
        else {}
    )
    bootstrap = (
        Bootstrap(
            n_resamples,
            confidence,
            seed,
            "percentile intervals of the nonparametric bootstrap; each resample's "
            "(group, label, prediction) counts are one Multinomial(N, counts/N) draw, the "
            "exact distribution of counts from resampling the N rows with replacement",
        )
        if n_resamples
        else None
    )
    return ClassificationAudit(
        num_rows=int(t.shape[0]),
        features=groups.features,
        groups=_build_groups(
            groups, sizes, included, min_group_size, rates, boot_rates, confidence, undefined
        ),
        overall={m: float(v) for m, v in overall.items()},
        overall_intervals=overall_iv,
        disparities=_build_disparities(
            disparities, boot_disp, confidence, _CLASSIFICATION_DISPARITY_METRIC, with_ratio=True
        ),
        empty_intersections=groups.empty_intersections,
        n_empty_intersections=groups.n_empty_intersections,
        small_groups=SmallGroupPolicy(min_group_size, small_groups, _names(groups, small)),
        bootstrap=bootstrap,
        method=_method(
            {
                "equalized_odds": "the larger of the true and false positive rate differences "
                "and the smaller of their ratios (fairlearn equalized_odds_difference/ratio, "
                "agg='worst_case'; a NaN TPR value wins, a NaN FPR value is passed over, as "
                "with Python's max/min there)",
                "undefined_rates": "a rate with a zero denominator in a group (no actual "
                "positives for TPR/FNR, no actual negatives for FPR, no predicted positives "
                "for precision) is 0, as sklearn/fairlearn report it; the group lists it in "
                "'undefined'",
            },
            n_resamples,
            "percentile, multinomial bootstrap over (group, label, prediction) counts",
            small_groups,
        ),
    )


def audit_regression(
    y_true: Any,
    y_pred: Any,
    groups: GroupIndex,
    *,
    min_group_size: int = 30,
    small_groups: SmallGroups = "include",
    n_resamples: int = 200,
    confidence: float = 0.95,
    seed: int | None = None,
) -> RegressionAudit:
    """Per-group MAE, RMSE, mean prediction and mean target, their disparities and intervals.

    Small groups and ``n_resamples`` behave as in :func:`audit_classification`; intervals come
    from a Poisson bootstrap.
    """
    t_raw, p_raw = _pair(y_true, y_pred)
    _check_options(t_raw.shape[0], groups, min_group_size, small_groups, n_resamples, confidence)
    t, p = _as_real("y_true", t_raw), _as_real("y_pred", p_raw)

    sums = _regression_sums(groups.codes, t, p, groups.n_groups)
    sizes = sums[:, 0].astype(np.int64)
    small = sizes < min_group_size
    included = ~small if small_groups == "exclude" else np.ones_like(small)
    stats = _regression_stats(sums)
    overall = _regression_stats(sums.sum(axis=0))
    disparities = _regression_disparities(stats, overall, included)

    boot_stats: dict[str, np.ndarray] | None = None
    boot_overall: dict[str, np.ndarray] | None = None
    boot_disp: dict[str, dict[str, np.ndarray]] | None = None
    if n_resamples:
        boot_sums = _poisson_sums(groups.codes, t, p, groups.n_groups, n_resamples, seed)
        boot_stats = _regression_stats(boot_sums)
        boot_overall = _regression_stats(boot_sums.sum(axis=1))
        boot_disp = _regression_disparities(boot_stats, boot_overall, included)
    overall_iv = (
        {m: _interval(*_quantiles(s, confidence)) for m, s in boot_overall.items()}
        if boot_overall is not None
        else {}
    )
    bootstrap = (
        Bootstrap(
            n_resamples,
            confidence,
            seed,
            "percentile intervals of the Poisson bootstrap: every row gets an independent "
            "Poisson(1) weight per resample, which approximates resampling the rows with "
            "replacement for large N",
        )
        if n_resamples
        else None
    )
    return RegressionAudit(
        num_rows=int(t.shape[0]),
        features=groups.features,
        groups=_build_groups(
            groups,
            sizes,
            included,
            min_group_size,
            stats,
            boot_stats,
            confidence,
            [() for _ in range(groups.n_groups)],
        ),
        overall={m: float(v) for m, v in overall.items()},
        overall_intervals=overall_iv,
        disparities=_build_disparities(
            disparities, boot_disp, confidence, {m: m for m in disparities}, with_ratio=False
        ),
        empty_intersections=groups.empty_intersections,
        n_empty_intersections=groups.n_empty_intersections,
        small_groups=SmallGroupPolicy(min_group_size, small_groups, _names(groups, small)),
        bootstrap=bootstrap,
        method=_method(
            {"regression": "errors are y_pred - y_true; MAE, RMSE and means per group"},
            n_resamples,
            "percentile, Poisson bootstrap with per-row Poisson(1) weights",
            small_groups,
        ),
    )
