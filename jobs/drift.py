"""Input drift: a profile of the training inputs, and the population stability index (PSI) of
live inputs against it.

The profile is plain JSON, written into every model bundle (``bundle.json``, key
``reference``) by the job, so the control plane can judge drift with the bundle's manifest
alone: no training data and no model needed.

- numeric column: up to ten bins cut at the deciles of the training values (repeated cut
  points merged, so a column with few distinct values gets fewer bins), with the fraction of
  training rows in each;
- categorical column: the fraction of each of the 50 most frequent values, the rest together
  as ``__other__``; a value never seen in training counts as ``__other__``;
- both: missing values (None, NaN) are a bin of their own.

PSI = sum over bins of (actual - expected) * ln(actual / expected), each fraction floored at
``EPSILON`` so an empty bin does not make it infinite. Rule of thumb: below 0.1 no shift, 0.1
to 0.2 moderate, above 0.2 (the default alert threshold) a shift worth a look.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

PROFILE_VERSION = 1
NUM_BINS = 10
TOP_CATEGORIES = 50
OTHER = "__other__"
EPSILON = 1e-4
# Enough rows for stable deciles; a bigger training split is sampled (seeded) down to this.
MAX_PROFILE_ROWS = 200_000


def reference_profile(
    table_or_columns: pa.Table | Mapping[str, Any],
    kinds: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The profile of each column of raw (not preprocessed) training rows.

    ``kinds``: "numeric", "categorical" or "array" per column (``jobs.data.read_columns``);
    a column without one is numeric when every present value is a number. Array columns
    (images, sequence windows) get no profile: a PSI per pixel would say nothing.
    """
    columns: dict[str, np.ndarray] = {}
    if isinstance(table_or_columns, pa.Table):
        for name in table_or_columns.column_names:
            columns[name] = np.asarray(table_or_columns.column(name).to_pylist(), dtype=object)
    else:
        for name, values in table_or_columns.items():
            columns[name] = values if isinstance(values, np.ndarray) else np.asarray(values, object)
    n = len(next(iter(columns.values()))) if columns else 0
    picks: np.ndarray | None = None
    if n > MAX_PROFILE_ROWS:
        picks = np.sort(np.random.default_rng(seed).choice(n, MAX_PROFILE_ROWS, replace=False))
    features: dict[str, Any] = {}
    for name, values in columns.items():
        if picks is not None:
            values = values[picks]
        kind = (kinds or {}).get(name) or _infer_kind(values)
        if kind == "array" or values.ndim > 1:
            continue
        if kind == "numeric":
            features[name] = _numeric_profile(_as_float(values))
        else:
            features[name] = _categorical_profile(values)
    return {
        "version": PROFILE_VERSION,
        "rows": n if picks is None else MAX_PROFILE_ROWS,
        "features": features,
    }


def psi(profile: Mapping[str, Any], values: Iterable[Any]) -> float:
    """PSI of ``values`` (one column's live values, raw as a client sent them) against one
    column's profile. NaN when there are no values."""
    data = np.asarray(list(values), dtype=object)
    if len(data) == 0:
        return math.nan
    if profile["kind"] == "numeric":
        expected = [*profile["fractions"], profile["missing"]]
        actual = _numeric_fractions(_as_float(data), profile["edges"])
    else:
        cats: dict[str, float] = profile["categories"]
        expected = [*cats.values(), profile["other"], profile["missing"]]
        counts = Counter(category_key(v) for v in data.tolist())
        missing = counts.pop(None, 0)
        known = [counts.pop(c, 0) for c in cats]
        other = sum(counts.values())
        actual = [c / len(data) for c in (*known, other, missing)]
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _infer_kind(values: np.ndarray) -> str:
    if values.dtype != object:
        return "array" if values.ndim > 1 else "numeric"
    present = [v for v in values.tolist() if category_key(v) is not None]
    if present and all(_is_number(v) for v in present):
        return "numeric"
    if any(isinstance(v, list | tuple | np.ndarray) for v in present):
        return "array"
    return "categorical"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _as_float(values: np.ndarray) -> np.ndarray:
    """Numbers as float64, anything else (None, text that is not a number) as NaN: missing.
    Booleans are 0/1, as training reads a boolean column."""
    if values.dtype != object:
        return values.astype(np.float64)
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values.tolist()):
        try:
            out[i] = float(v) if v is not None else math.nan
        except (TypeError, ValueError):
            out[i] = math.nan
    return out


def _numeric_profile(x: np.ndarray) -> dict[str, Any]:
    present = x[~np.isnan(x)]
    missing = 1.0 - len(present) / len(x) if len(x) else 0.0
    if len(present) == 0:
        return {"kind": "numeric", "edges": [], "fractions": [0.0], "missing": missing}
    # Cut points are values of the data ("lower"), never between two of them: a column of 0s
    # and 1s gets the bins {0} and {1}, not a bin (0, 0.3] no value can fall into.
    cuts = np.quantile(present, np.arange(1, NUM_BINS) / NUM_BINS, method="lower")
    edges = [float(c) for c in np.unique(cuts)]
    return {
        "kind": "numeric",
        "edges": edges,
        "fractions": _numeric_fractions(x, edges)[:-1],
        "missing": missing,
        "min": float(present.min()),
        "max": float(present.max()),
    }


def _numeric_fractions(x: np.ndarray, edges: list[float]) -> list[float]:
    """Fractions of ``x`` per bin (bins closed on the right: (-inf, e0], (e0, e1], ...,
    (e_last, inf)), then the missing fraction."""
    nan = np.isnan(x)
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), x[~nan], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    n = len(x)
    return [float(c) / n for c in counts] + [float(nan.sum()) / n]


def _categorical_profile(values: np.ndarray) -> dict[str, Any]:
    counts = Counter(category_key(v) for v in values.tolist())
    n = len(values)
    missing = counts.pop(None, 0)
    top = counts.most_common(TOP_CATEGORIES)
    kept = sum(c for _, c in top)
    return {
        "kind": "categorical",
        "categories": {str(k): c / n for k, c in top},
        "other": (n - missing - kept) / n if n else 0.0,
        "missing": missing / n if n else 0.0,
    }


def category_key(v: Any) -> str | None:
    """A value as the category it names: training reads text columns as str, a client may
    send 3 where the data said "3" (or 3.0): all are "3". None and NaN are missing."""
    if v is None:
        return None
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return None
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    return str(v)
