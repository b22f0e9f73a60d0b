"""Preprocessing: fitted on the training split only, stored as JSON in the model bundle, and
applied unchanged to validation, test and serving inputs.

Three kinds of input column:

- numeric: missing values filled (mean, median, most frequent or a constant), then
  standardised, min-max normalised or left;
- categorical (text): one-hot, or ordinal codes; categories unseen in training encode as
  "none of these" (all zeros one-hot, -1 ordinal), as do missing values unless the column fills
  them with its most frequent value or a constant;
- array: one image or sequence per row, of a fixed shape; scaled as a whole (one centre and
  spread for every element) and missing elements filled with the training mean.

The model sees a ``layout``: ``flat`` (one vector per row: every column side by side, arrays
flattened), ``image`` (one array column as channels x height x width) or ``sequence`` (one
array column as steps x features).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from jobs.data import ColumnKind, Columns, DataError
from jobs.spec import PreprocessingSpec

Layout = Literal["flat", "image", "sequence"]
# The model's inputs are float32: a scaled value beyond this becomes inf on the way in.
FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    encoding: Literal["one_hot", "ordinal"] = "one_hot"
    fill: str | None = None  # None: a missing value is "none of these"

    @property
    def width(self) -> int:
        return len(self.categories) if self.encoding == "one_hot" else 1


@dataclass
class ArrayColumn:
    name: str
    shape: list[int]
    fill: float
    center: float
    scale: float

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _spread(values: np.ndarray, scale: str) -> tuple[float, float]:
    if scale == "standard":
        return float(values.mean()), float(values.std()) or 1.0
    if scale == "minmax":
        return float(values.min()), float(values.max() - values.min()) or 1.0
    return 0.0, 1.0


def _numeric_fill(present: np.ndarray, impute: str, constant: Any, name: str) -> float:
    if impute == "mean":
        return float(present.mean())
    if impute == "most_frequent":
        values, counts = np.unique(present, return_counts=True)
        return float(values[counts.argmax()])
    if impute == "constant":
        if constant is None:
            return 0.0
        if isinstance(constant, bool) or not isinstance(constant, int | float):
            raise DataError(
                f"preprocessing fill_value for numeric column '{name}' must be a number"
            )
        return float(constant)
    return float(np.median(present))  # median, and what "drop" fills in at serving time


@dataclass
class Preprocessor:
    numeric: list[NumericColumn] = field(default_factory=list)
    categorical: list[CategoricalColumn] = field(default_factory=list)
    arrays: list[ArrayColumn] = field(default_factory=list)
    layout: Layout = "flat"

    @property
    def input_columns(self) -> list[str]:
        return (
            [c.name for c in self.numeric]
            + [c.name for c in self.categorical]
            + [c.name for c in self.arrays]
        )

    @property
    def num_features(self) -> int:
        """Width of the flat layout."""
        return (
            len(self.numeric)
            + sum(c.width for c in self.categorical)
            + sum(a.size for a in self.arrays)
        )

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one row as the model sees it."""
        if self.layout == "flat":
            return (self.num_features,)
        shape = tuple(self.arrays[0].shape)
        if self.layout == "image":
            return (1, *shape) if len(shape) == 2 else shape
        return (shape[0], 1) if len(shape) == 1 else shape

    @classmethod
    def fit(
        cls,
        columns: Columns,
        kinds: dict[str, ColumnKind],
        options: PreprocessingSpec | None = None,
        layout: Layout = "flat",
    ) -> Preprocessor:
        opts = options or PreprocessingSpec()
        pre = cls(layout=layout)
        for name, values in columns.items():
            own = opts.columns.get(name)
            impute = (own.impute if own and own.impute else None) or opts.impute
            constant = own.fill_value if own and own.fill_value is not None else opts.fill_value
            scale = (own.scale if own and own.scale else None) or opts.scale
            if kinds[name] == "numeric":
                present = values[~np.isnan(values)]
                if present.size == 0:
                    raise DataError(f"column '{name}' has no values in the training split")
                fill = _numeric_fill(present, impute, constant, name)
                center, spread = _spread(present, scale)
                pre.numeric.append(NumericColumn(name, fill, center, spread))
            elif kinds[name] == "categorical":
                present_text = [v for v in values if v is not None]
                encoding = (own.categorical if own and own.categorical else None) or (
                    opts.categorical
                )
                fill_text: str | None = None
                if impute == "most_frequent" and present_text:
                    fill_text = Counter(present_text).most_common(1)[0][0]
                elif impute == "constant":
                    fill_text = "missing" if constant is None else str(constant)
                pre.categorical.append(
                    CategoricalColumn(name, sorted(set(present_text)), encoding, fill_text)
                )
            else:
                present = values[~np.isnan(values)]
                if present.size == 0:
                    raise DataError(f"column '{name}' has no values in the training split")
                center, spread = _spread(present, scale)
                shape = list(values.shape[1:])
                pre.arrays.append(ArrayColumn(name, shape, float(present.mean()), center, spread))
        if layout != "flat" and (len(pre.arrays) != 1 or len(pre.input_columns) != 1):
            raise DataError(
                f"a model that reads {'images' if layout == 'image' else 'sequences'} takes "
                f"exactly one array column as input; got {pre.input_columns}"
            )
        if layout == "image" and len(pre.arrays[0].shape) not in (2, 3):
            raise DataError(
                f"column '{pre.arrays[0].name}' holds arrays of shape {pre.arrays[0].shape}; "
                "an image is [height][width] or [channels][height][width]"
            )
        if layout == "sequence" and len(pre.arrays[0].shape) not in (1, 2):
            raise DataError(
                f"column '{pre.arrays[0].name}' holds arrays of shape {pre.arrays[0].shape}; "
                "a sequence is [steps] or [steps][features]"
            )
        return pre

    def transform(self, columns: Columns) -> np.ndarray:
        """Encode raw columns as the model's float32 input, shaped ``(rows, *example_shape)``."""
        n = len(next(iter(columns.values()))) if columns else 0
        if self.layout != "flat":
            return self._array(self.arrays[0], columns).reshape(n, *self.example_shape)
        out = np.zeros((n, self.num_features), dtype=np.float32)
        j = 0
        for num in self.numeric:
            values = np.asarray(columns[num.name], dtype=np.float64)
            values = np.where(np.isnan(values), num.fill, values)
            out[:, j] = (values - num.center) / num.scale
            j += 1
        for cat in self.categorical:
            index: dict[str | None, int] = {c: i for i, c in enumerate(cat.categories)}
            codes = np.fromiter(
                (index.get(cat.fill if v is None else v, -1) for v in columns[cat.name]),
                dtype=np.int64,
                count=n,
            )
            if cat.encoding == "ordinal":
                # Known categories spread over [0, 1]; unseen and unfilled missing ones are -1.
                top = max(len(cat.categories) - 1, 1)
                out[:, j] = np.where(codes >= 0, codes / top, -1.0)
            else:
                rows = np.flatnonzero(codes >= 0)
                out[rows, j + codes[rows]] = 1.0
            j += cat.width
        for arr in self.arrays:
            out[:, j : j + arr.size] = self._array(arr, columns).reshape(n, arr.size)
            j += arr.size
        return out

    @staticmethod
    def _array(arr: ArrayColumn, columns: Columns) -> np.ndarray:
        values = np.asarray(columns[arr.name], dtype=np.float64)
        values = np.where(np.isnan(values), arr.fill, values)
        return ((values - arr.center) / arr.scale).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "numeric": [asdict(c) for c in self.numeric],
            "categorical": [asdict(c) for c in self.categorical],
            "arrays": [asdict(c) for c in self.arrays],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(
            numeric=[NumericColumn(**c) for c in data["numeric"]],
            categorical=[CategoricalColumn(**c) for c in data["categorical"]],
            arrays=[ArrayColumn(**c) for c in data.get("arrays", [])],
            layout=data.get("layout", "flat"),
        )

    def input_signature(self) -> list[dict[str, Any]]:
        return (
            [{"name": c.name, "kind": "numeric"} for c in self.numeric]
            + [{"name": c.name, "kind": "categorical"} for c in self.categorical]
            + [{"name": c.name, "kind": "array", "shape": c.shape} for c in self.arrays]
        )

    def columns_from_records(self, records: list[dict[str, Any]], finite: bool = False) -> Columns:
        """Turn JSON instances into raw columns, rejecting what cannot be encoded.

        A key that is absent is an error (a client bug); an explicit null is a missing value
        and is filled like in training.

        ``finite`` (serving): a NaN or an infinity is refused rather than taken as missing
        (JSON has neither, so a client that sends one sent something other than a number),
        and so is a finite number that this preprocessing would scale past float32, the
        model's input type: either would reach the network as inf and come out as NaN.
        Batch scoring leaves it off: a Parquet NaN there is a missing value, as in training.
        """
        if not isinstance(records, list) or not records:
            raise DataError("instances must be a non-empty list of objects")
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise DataError(f"instances[{i}] must be an object", ["instances", i])
        columns: Columns = {}
        for num in self.numeric:
            columns[num.name] = np.array(
                [
                    _number(_get(rec, num.name, i), num.name, i, finite)
                    for i, rec in enumerate(records)
                ],
                dtype=np.float64,
            )
        for cat in self.categorical:
            columns[cat.name] = np.array(
                [
                    _text(_get(rec, cat.name, i), cat.name, i, finite)
                    for i, rec in enumerate(records)
                ],
                dtype=object,
            )
        for arr in self.arrays:
            columns[arr.name] = np.stack(
                [_array(_get(rec, arr.name, i), arr, i, finite) for i, rec in enumerate(records)]
            )
        if finite:
            self._check_range(columns)
        return columns

    def _check_range(self, columns: Columns) -> None:
        """Refuse the first value whose scaled form (what the model is fed, as float32) is
        not finite, naming its instance and column."""
        scaled: list[tuple[str, np.ndarray, float, float, float]] = [
            (c.name, columns[c.name], c.fill, c.center, c.scale) for c in self.numeric
        ] + [(a.name, columns[a.name], a.fill, a.center, a.scale) for a in self.arrays]
        for name, values, fill, center, scale in scaled:
            with np.errstate(over="ignore", invalid="ignore"):
                encoded = (np.where(np.isnan(values), fill, values) - center) / scale
            fits = np.abs(encoded.reshape(len(values), -1)) <= FLOAT32_MAX
            bad = np.flatnonzero(~fits.all(axis=1))
            if bad.size:
                row = int(bad[0])
                raise DataError(
                    f"instances[{row}].{name} is out of range for this model: scaled as in "
                    f"training it passes the largest float32 ({FLOAT32_MAX:.4g})",
                    ["instances", row, name],
                )


def _get(rec: dict[str, Any], name: str, row: int) -> Any:
    if name not in rec:
        raise DataError(f"instances[{row}] is missing column '{name}'", ["instances", row, name])
    return rec[name]


def _number(value: Any, name: str, row: int, finite: bool = False) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(
            f"instances[{row}].{name} must be a number, got {_shown(value)}",
            ["instances", row, name],
        )
    try:
        out = float(value)
    except OverflowError:  # an integer with hundreds of digits
        out = math.inf
    if finite and not math.isfinite(out):
        raise DataError(
            f"instances[{row}].{name} must be a finite number, got {_shown(value)}",
            ["instances", row, name],
        )
    return out


def _text(value: Any, name: str, row: int, finite: bool = False) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float | bool) or (
        finite and isinstance(value, float) and not math.isfinite(value)
    ):
        raise DataError(
            f"instances[{row}].{name} must be a string, got {_shown(value)}",
            ["instances", row, name],
        )
    return str(value)


def _array(value: Any, arr: ArrayColumn, row: int, finite: bool = False) -> np.ndarray:
    if value is None:
        return np.full(arr.shape, math.nan)
    try:
        out = np.array(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(
            f"instances[{row}].{arr.name} must be an array of numbers of shape {arr.shape}",
            ["instances", row, arr.name],
        ) from None
    if list(out.shape) != arr.shape:
        raise DataError(
            f"instances[{row}].{arr.name} has shape {list(out.shape)}; the model takes {arr.shape}",
            ["instances", row, arr.name],
        )
    # NaN inside an array is a null element (a missing pixel or step, filled like in
    # training); an infinity is never a value.
    if finite and np.isinf(out).any():
        raise DataError(
            f"instances[{row}].{arr.name} holds an infinite number",
            ["instances", row, arr.name],
        )
    return out


def _shown(value: Any) -> str:
    """A value as an error message quotes it: cut short (an integer of 4,000 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def layout_for(architecture: str, kinds: dict[str, ColumnKind]) -> Layout:
    """How an architecture reads its inputs: a CNN images, a recurrent network sequences, a
    transformer sequences when given an array column and feature tokens otherwise."""
    if architecture == "cnn":
        return "image"
    if architecture in ("lstm", "gru"):
        return "sequence"
    if architecture == "transformer" and "array" in kinds.values():
        return "sequence"
    return "flat"
