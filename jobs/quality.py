"""The data quality report of a table: what to look at before training on it.

Computed at registration (stored with the dataset) with pyarrow.compute, so it stays fast on
tables of a few million rows. The figures:

- per column: ``missing`` rows (null, NaN, or text that is blank, the same rule the fairness
  audit uses for its ``unknown`` group), ``missing_rate``, ``distinct`` non-missing values,
  ``infinite`` rows (holding +inf or -inf, which imputation does not fill), and
  ``groups`` (value counts, largest first) for low-cardinality text, integer and boolean
  columns: those are the columns a fairness audit could group rows by;
- ``duplicate_rows``: rows equal in every column to an earlier row;
- ``constant_columns``: columns whose every row holds the same value (missing counts as one
  value, so an all-missing column is constant);
- ``label_balance`` when a target is named: class counts and shares, or ``continuous`` for a
  regression target;
- ``warnings``: one per finding a practitioner should act on, each with a ``kind`` from
  :data:`WARNING_KINDS`, the ``column`` (None for the table) and a sentence.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.data import DataError, array_values
from jobs.tasks import MAX_CLASS_VALUES

# The audit's default ``min_group_count``: a group smaller than this gets wide intervals and is
# flagged there, so the report warns about it before anyone trains.
MIN_GROUP_COUNT = 30
# A text, integer or boolean column with at most this many distinct values gets value counts.
MAX_GROUPS = 20
MOSTLY_MISSING = 0.5
# Smallest class under a tenth of the largest: accuracy alone would hide a useless model.
IMBALANCE_RATIO = 0.1

WARNING_KINDS = (
    "infinite",
    "all_missing",
    "mostly_missing",
    "constant",
    "duplicates",
    "small_groups",
    "target_missing",
    "imbalanced",
)


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.cast(col, pa.string()) if pa.types.is_dictionary(col.type) else col


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def missing_mask(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a row has no value: null, NaN, or blank text."""
    mask = pc.is_null(col, nan_is_null=True)
    if _is_text(col.type):
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(_text(col)), ""), False)
        mask = pc.or_(mask, blank)
    return mask


def infinite_rows(col: pa.ChunkedArray) -> int:
    """Rows holding an infinity: in a float column, or anywhere in a row's array of floats.
    Imputation fills missing values, not these, so a model trained on them meets them as is."""
    t = col.type
    depth = 0
    while _is_list(t):
        t, depth = t.value_type, depth + 1
    if not pa.types.is_floating(t) or len(col) == 0:
        return 0
    total = 0
    for chunk in col.chunks:
        if depth == 0:
            total += int(pc.sum(pc.fill_null(pc.is_inf(chunk), False)).as_py() or 0)
            continue
        # Per row: flatten to the floats, mark infinities, and count the rows they fall in.
        parents = pc.list_parent_indices(chunk)
        values = pc.list_flatten(chunk)
        for _ in range(depth - 1):
            parents = pc.take(parents, pc.list_parent_indices(values))
            values = pc.list_flatten(values)
        hits = pc.filter(parents, pc.fill_null(pc.is_inf(values), False))
        total += int(pc.count_distinct(hits).as_py() or 0) if len(hits) else 0
    return total


def _row_keys(col: pa.ChunkedArray, name: str) -> pa.Array | pa.ChunkedArray:
    """The column in a form Arrow can hash (group_by, count_distinct): array rows become one
    binary value each, so two rows holding equal arrays compare equal."""
    if pa.types.is_dictionary(col.type):
        return _text(col)
    if not _is_list(col.type):
        return col
    rows = col.to_pylist()
    try:
        values = array_values(rows, name)
        flat = np.ascontiguousarray(values.reshape(len(rows), -1))
        width = flat.shape[1] * flat.itemsize
        keys: pa.Array = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), len(rows), [None, pa.py_buffer(flat.tobytes())]
        )
    except DataError:
        # Rows of different shapes (or no values at all): slower, but still exact.
        keys = pa.array([json.dumps(r) for r in rows], pa.string())
    return pc.if_else(pc.is_null(col), pa.scalar(None, keys.type), keys)


def _groups(present: pa.Array | pa.ChunkedArray) -> list[dict[str, Any]]:
    counts = pc.value_counts(present)
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    # Largest first; ties by value so the report is the same on every run.
    ordered = sorted(pairs, key=lambda p: (-p[1], str(p[0])))
    return [{"value": v, "count": int(c)} for v, c in ordered]


def _has_groups(t: pa.DataType) -> bool:
    return _is_text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)


def _label_balance(
    table: pa.Table, target: str, present: pa.Array | pa.ChunkedArray, missing: int
) -> dict[str, Any]:
    t = table.schema.field(target).type
    out: dict[str, Any] = {"column": target, "missing": missing}
    classes_like = _is_text(t) or pa.types.is_boolean(t)
    if not classes_like and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        as_float = pc.cast(present, pa.float64())
        whole = len(present) == 0 or bool(pc.all(pc.equal(pc.floor(as_float), as_float)).as_py())
        classes_like = whole and pc.count_distinct(as_float).as_py() <= MAX_CLASS_VALUES
    if not classes_like:
        out["continuous"] = True
        return out
    groups = _groups(present)
    total = sum(g["count"] for g in groups)
    out["continuous"] = False
    out["classes"] = [{**g, "share": g["count"] / total} for g in groups]
    out["minority_to_majority"] = groups[-1]["count"] / groups[0]["count"] if groups else None
    return out


def quality_report(
    table: pa.Table, target: str | None = None, min_group_count: int = MIN_GROUP_COUNT
) -> dict[str, Any]:
    """The report described in the module docstring; ``target`` must be a column of ``table``."""
    if target is not None and target not in table.column_names:
        raise DataError(f"target '{target}' is not a column of the table")
    n = table.num_rows
    columns: list[dict[str, Any]] = []
    constant: list[str] = []
    warnings: list[dict[str, Any]] = []
    keys: dict[str, pa.Array | pa.ChunkedArray] = {}
    label_balance: dict[str, Any] | None = None

    def warn(kind: str, column: str | None, message: str) -> None:
        warnings.append({"kind": kind, "column": column, "message": message})

    for i, field in enumerate(table.schema):
        name, col = field.name, table.column(i)
        mask = missing_mask(col)
        missing = int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)
        key = keys[name] = _row_keys(col, name)
        present_key = pc.filter(key, pc.invert(mask))
        distinct = int(pc.count_distinct(present_key).as_py())
        infinite = infinite_rows(col)
        entry: dict[str, Any] = {
            "name": name,
            "missing": missing,
            "missing_rate": missing / n if n else 0.0,
            "distinct": distinct,
            "infinite": infinite,
        }
        if infinite:
            warn(
                "infinite",
                name,
                f"column '{name}' holds an infinite value in {infinite} of {n} rows; a job "
                "training on it fails until they are replaced or dropped",
            )
        if _has_groups(field.type) and distinct <= MAX_GROUPS:
            present = pc.filter(_text(col), pc.invert(mask))
            entry["groups"] = _groups(present)
            small = [g for g in entry["groups"] if g["count"] < min_group_count]
            if small:
                listed = ", ".join(f"{g['value']} ({g['count']})" for g in small)
                warn(
                    "small_groups",
                    name,
                    f"column '{name}' has groups under {min_group_count} rows: {listed}; a "
                    "fairness audit by this column flags them as small (wide intervals)",
                )
        columns.append(entry)

        if n and (missing == n or (missing == 0 and distinct == 1)):
            constant.append(name)
        if n and missing == n:
            warn("all_missing", name, f"column '{name}' has no values")
        elif n and missing / n >= MOSTLY_MISSING:
            warn(
                "mostly_missing",
                name,
                f"column '{name}' is missing in {missing} of {n} rows ({missing / n:.0%})",
            )
        elif n and missing == 0 and distinct == 1:
            warn("constant", name, f"column '{name}' holds one value in every row")

        if name == target:
            present = pc.filter(_text(col), pc.invert(mask))
            label_balance = _label_balance(table, name, present, missing)
            if missing:
                warn(
                    "target_missing",
                    name,
                    f"target '{name}' is missing in {missing} rows; a job leaves them out",
                )
            ratio = label_balance.get("minority_to_majority")
            if ratio is not None and ratio < IMBALANCE_RATIO:
                classes = label_balance["classes"]
                warn(
                    "imbalanced",
                    name,
                    f"target '{name}': the smallest class ({classes[-1]['value']}, "
                    f"{classes[-1]['count']} rows) is under {IMBALANCE_RATIO:.0%} of the "
                    f"largest ({classes[0]['value']}, {classes[0]['count']} rows); consider "
                    "training.class_weights and a metric other than accuracy",
                )

    duplicates = 0
    if n and keys:
        distinct_rows = pa.table(list(keys.values()), names=[f"c{i}" for i in range(len(keys))])
        duplicates = n - distinct_rows.group_by(distinct_rows.column_names).aggregate([]).num_rows
    if duplicates:
        warn("duplicates", None, f"{duplicates} rows repeat an earlier row in every column")
    # Table-wide findings first, then by column order: the report reads top to bottom.
    warnings.sort(key=lambda w: w["column"] is not None)
    return {
        "num_rows": n,
        "num_columns": table.num_columns,
        "min_group_count": min_group_count,
        "duplicate_rows": duplicates,
        "constant_columns": constant,
        "columns": columns,
        "label_balance": label_balance,
        "warnings": warnings,
    }
