"""Datasets on the cluster side: read, describe and split them.

Everything here works on plain columns (name -> numpy array) so the same code prepares the
training data in the job driver and the raw instances a serving replica receives
(``jobs/preprocess.py`` turns those columns into model inputs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.datasets import resolve_uri

ColumnKind = Literal["numeric", "categorical", "array"]
Columns = dict[str, np.ndarray]


class DataError(ValueError):
    """The data cannot be used as the spec asks; the message says why, for the user.

    ``loc``: where in a request the fault is (``["instances", 3, "age"]``), when it is in one.
    """

    def __init__(self, message: str, loc: list[str | int] | None = None) -> None:
        super().__init__(message)
        self.loc = loc


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f, chunk)


def stream_sha256(f: BinaryIO | pa.NativeFile, chunk: int = 1 << 20) -> str:
    """sha256 of what is left to read in ``f``, a block at a time (never the whole file)."""
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def _list_item(arrow_type: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return arrow_type.value_type
    if pa.types.is_fixed_size_list(arrow_type):
        return arrow_type.value_type
    return None


def column_kind(arrow_type: pa.DataType) -> ColumnKind | None:
    """How a column can feed a model; None when it cannot.

    A list of numbers (or of lists of numbers, to any depth) is an array column: one image or
    sequence per row.
    """
    item = _list_item(arrow_type)
    if item is not None:
        while (inner := _list_item(item)) is not None:
            item = inner
        return "array" if column_kind(item) == "numeric" else None
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "numeric"
    if pa.types.is_boolean(arrow_type) or pa.types.is_decimal(arrow_type):
        return "numeric"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "categorical"
    if pa.types.is_dictionary(arrow_type):
        return "categorical"
    return None


def describe_schema(schema: pa.Schema) -> list[dict[str, Any]]:
    try:
        return [{"name": f.name, "type": str(f.type), "kind": column_kind(f.type)} for f in schema]
    except UnicodeDecodeError:
        # Arrow's CSV reader keeps non-UTF-8 values as binary, but any header bytes as a name.
        raise DataError("a column name is not UTF-8 text; is the file CSV?") from None


def describe_table(table: pa.Table) -> list[dict[str, Any]]:
    """The schema, plus the shape of each array column (taken from its first non-null row; a
    column whose rows differ in shape is an error, found here rather than in a job)."""
    out = describe_schema(table.schema)
    for col in out:
        if col["kind"] == "array":
            col["shape"] = list(
                array_values(table.column(col["name"]).to_pylist(), col["name"]).shape[1:]
            )
    return out


def read_columns(uri: str, names: list[str]) -> tuple[Columns, dict[str, ColumnKind]]:
    """Read the named columns of a Parquet dataset as numpy arrays.

    Numeric columns become float64 with NaN for missing values; text columns become object
    arrays of str with None for missing values; array columns become float64 arrays of shape
    ``(rows, *shape)`` (NaN where a row or element is missing).
    """
    table = pq.read_table(resolve_uri(uri), columns=names)
    columns: Columns = {}
    kinds: dict[str, ColumnKind] = {}
    for name in names:
        col = table.column(name)
        kind = column_kind(col.type)
        if kind is None:
            raise DataError(f"column '{name}' has type {col.type}, which a tabular model can't use")
        kinds[name] = kind
        columns[name] = _to_numpy(col, kind, name)
    return columns, kinds


def read_column(uri: str, name: str) -> np.ndarray:
    """One column's values as Python objects (None where missing), e.g. a target to inspect."""
    table = pq.read_table(resolve_uri(uri), columns=[name])
    return np.asarray(table.column(name).to_pylist(), dtype=object)


def _to_numpy(col: pa.ChunkedArray, kind: ColumnKind, name: str = "") -> np.ndarray:
    if kind == "array":
        return array_values(col.to_pylist(), name)
    if kind == "numeric":
        return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, pa.string())
    return np.asarray(col.to_pylist(), dtype=object)


def array_values(rows: list[Any], name: str) -> np.ndarray:
    """Rows of nested lists as one float array; every row must have the same shape."""
    shape: tuple[int, ...] | None = None
    for row in rows:
        if row is not None:
            shape = np.shape(row)
            break
    if shape is None:
        raise DataError(f"column '{name}' has no values")
    out = np.full((len(rows), *shape), np.nan)
    for i, row in enumerate(rows):
        if row is None:
            continue
        try:
            value = np.array(row, dtype=np.float64)
        except ValueError:
            value = None
        if value is None or value.shape != shape:
            got = list(value.shape) if value is not None else "uneven lists"
            raise DataError(
                f"column '{name}': row {i} has shape {got}, row 0 has {list(shape)}; arrays in "
                "one column must all have the same shape"
            )
        out[i] = value
    return out


def is_missing(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None for v in values], dtype=bool)
    if values.ndim > 1:
        return np.isnan(values.reshape(len(values), -1)).all(axis=1)
    return np.isnan(values)


# ---------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_indices(
    n: int,
    validation: float,
    test: float,
    seed: int,
    stratify_by: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    order_by: np.ndarray | None = None,
) -> Split:
    """Seeded split of row indices.

    With ``stratify_by`` each class is split on its own (class proportions kept); with
    ``groups`` whole groups are assigned (no group in two splits; fractions are met as closely
    as whole groups allow); with ``order_by`` rows are sorted by it and the earliest train, the
    latest test (no shuffle: the future never leaks into training).
    """
    if order_by is not None:
        idx = np.argsort(order_by, kind="stable")
        n_test, n_val = round(n * test), round(n * validation)
        cut = n - n_test - n_val
        return Split(
            np.sort(idx[:cut]), np.sort(idx[cut : cut + n_val]), np.sort(idx[cut + n_val :])
        )
    rng = np.random.default_rng(seed)
    if groups is not None:
        keys, codes = np.unique(groups.astype(str), return_inverse=True)
        sizes = np.bincount(codes, minlength=len(keys))
        part = np.zeros(len(keys), dtype=np.int64)  # 0 train, 1 validation, 2 test
        filled = [0, 0, 0]
        for g in rng.permutation(len(keys)):
            if filled[2] < n * test:
                part[g] = 2
            elif filled[1] < n * validation:
                part[g] = 1
            filled[part[g]] += sizes[g]
        row_part = part[codes]
        return Split(*(np.flatnonzero(row_part == k) for k in range(3)))
    classes = (
        [np.arange(n)]
        if stratify_by is None
        else [np.flatnonzero(stratify_by == c) for c in np.unique(stratify_by)]
    )
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for idx in classes:
        idx = rng.permutation(idx)
        n_test = round(len(idx) * test)
        n_val = round(len(idx) * validation)
        parts["test"].append(idx[:n_test])
        parts["validation"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return Split(**{k: np.sort(np.concatenate(v)) for k, v in parts.items()})


def take(columns: Columns, idx: np.ndarray) -> Columns:
    return {k: v[idx] for k, v in columns.items()}
