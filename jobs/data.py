"""Datasets on the cluster side: read, describe, split, and the preprocessing fitted on them.

Everything here works on plain columns (name -> numpy array) so the same code prepares the
training data in the job driver and the raw instances a serving replica receives.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.datasets import resolve_uri

ColumnKind = Literal["numeric", "categorical"]
Columns = dict[str, np.ndarray]


class DataError(ValueError):
    """The data cannot be used as the spec asks; the message says why, for the user."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def column_kind(arrow_type: pa.DataType) -> ColumnKind | None:
    """How a column can feed a tabular model; None when it cannot."""
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
    return [{"name": f.name, "type": str(f.type), "kind": column_kind(f.type)} for f in schema]


def read_columns(uri: str, names: list[str]) -> tuple[Columns, dict[str, ColumnKind]]:
    """Read the named columns of a Parquet dataset as numpy arrays.

    Numeric columns become float64 with NaN for missing values; text columns become object
    arrays of str with None for missing values.
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
        columns[name] = _to_numpy(col, kind)
    return columns, kinds


def _to_numpy(col: pa.ChunkedArray, kind: ColumnKind) -> np.ndarray:
    if kind == "numeric":
        return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, pa.string())
    return np.asarray(col.to_pylist(), dtype=object)


def is_missing(values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.array([v is None for v in values], dtype=bool)
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
) -> Split:
    """Seeded split of row indices; with ``stratify_by`` each class is split on its own."""
    rng = np.random.default_rng(seed)
    groups = (
        [np.arange(n)]
        if stratify_by is None
        else [np.flatnonzero(stratify_by == c) for c in np.unique(stratify_by)]
    )
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for idx in groups:
        idx = rng.permutation(idx)
        n_test = round(len(idx) * test)
        n_val = round(len(idx) * validation)
        parts["test"].append(idx[:n_test])
        parts["validation"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return Split(**{k: np.sort(np.concatenate(v)) for k, v in parts.items()})


def take(columns: Columns, idx: np.ndarray) -> Columns:
    return {k: v[idx] for k, v in columns.items()}


# ---------------------------------------------------------------------------------------------
# Preprocessing: fitted on training rows only, stored as JSON in the model bundle.


@dataclass
class NumericColumn:
    name: str
    fill: float
    center: float
    scale: float


@dataclass
class CategoricalColumn:
    name: str
    categories: list[str]


@dataclass
class Preprocessor:
    numeric: list[NumericColumn] = field(default_factory=list)
    categorical: list[CategoricalColumn] = field(default_factory=list)

    @property
    def input_columns(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    @property
    def num_features(self) -> int:
        return len(self.numeric) + sum(len(c.categories) for c in self.categorical)

    @classmethod
    def fit(
        cls,
        columns: Columns,
        kinds: dict[str, ColumnKind],
        impute: str = "median",
        scale: str = "standard",
    ) -> Preprocessor:
        pre = cls()
        for name, values in columns.items():
            if kinds[name] == "numeric":
                present = values[~np.isnan(values)]
                if present.size == 0:
                    raise DataError(f"column '{name}' has no values in the training split")
                fill = float(np.median(present) if impute == "median" else np.mean(present))
                center, spread = 0.0, 1.0
                if scale == "standard":
                    center, spread = float(present.mean()), float(present.std())
                elif scale == "minmax":
                    center, spread = float(present.min()), float(present.max() - present.min())
                pre.numeric.append(NumericColumn(name, fill, center, spread or 1.0))
            else:
                seen = sorted({v for v in values if v is not None})
                pre.categorical.append(CategoricalColumn(name, seen))
        return pre

    def transform(self, columns: Columns) -> np.ndarray:
        """Encode raw columns as the model's float32 input matrix."""
        n = len(next(iter(columns.values()))) if columns else 0
        out = np.zeros((n, self.num_features), dtype=np.float32)
        j = 0
        for num in self.numeric:
            values = np.asarray(columns[num.name], dtype=np.float64)
            values = np.where(np.isnan(values), num.fill, values)
            out[:, j] = (values - num.center) / num.scale
            j += 1
        for cat in self.categorical:
            # Unknown and missing categories stay all-zero: the model sees "none of these".
            index = {c: i for i, c in enumerate(cat.categories)}
            codes = np.fromiter(
                (index.get(v, -1) if v is not None else -1 for v in columns[cat.name]),
                dtype=np.int64,
                count=n,
            )
            rows = np.flatnonzero(codes >= 0)
            out[rows, j + codes[rows]] = 1.0
            j += len(cat.categories)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "numeric": [vars(c) for c in self.numeric],
            "categorical": [vars(c) for c in self.categorical],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(
            numeric=[NumericColumn(**c) for c in data["numeric"]],
            categorical=[CategoricalColumn(**c) for c in data["categorical"]],
        )

    def input_signature(self) -> list[dict[str, str]]:
        return [{"name": c.name, "kind": "numeric"} for c in self.numeric] + [
            {"name": c.name, "kind": "categorical"} for c in self.categorical
        ]

    def columns_from_records(self, records: list[dict[str, Any]]) -> Columns:
        """Turn JSON instances into raw columns, rejecting what cannot be encoded.

        A key that is absent is an error (a client bug); an explicit null is a missing value
        and is imputed like in training.
        """
        if not isinstance(records, list) or not records:
            raise DataError("instances must be a non-empty list of objects")
        columns: Columns = {}
        for kind, specs in (("numeric", self.numeric), ("categorical", self.categorical)):
            for col in specs:
                values: list[Any] = []
                for i, rec in enumerate(records):
                    if not isinstance(rec, dict):
                        raise DataError(f"instances[{i}] must be an object")
                    if col.name not in rec:
                        raise DataError(f"instances[{i}] is missing column '{col.name}'")
                    values.append(_coerce(rec[col.name], kind, col.name, i))
                columns[col.name] = (
                    np.array(values, dtype=np.float64)
                    if kind == "numeric"
                    else np.array(values, dtype=object)
                )
        return columns


def _coerce(value: Any, kind: str, name: str, row: int) -> Any:
    if kind == "numeric":
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"instances[{row}].{name} must be a number, got {value!r}")
        return float(value)
    if value is None:
        return None
    if not isinstance(value, str | int | float | bool):
        raise DataError(f"instances[{row}].{name} must be a string, got {value!r}")
    return str(value)


# ---------------------------------------------------------------------------------------------
# Labels


@dataclass(frozen=True)
class Labels:
    classes: list[Any]
    codes: np.ndarray  # int64 index into classes


def encode_labels(values: np.ndarray) -> Labels:
    present = values[~is_missing(values)]
    classes = sorted(set(present.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    return Labels(classes, np.array([index[v] for v in values], dtype=np.int64))
