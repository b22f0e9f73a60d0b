"""The job's data, made ready for its search: read, checked, split, encoded, windowed.

The driver runs this before its search, so nothing here imports torch (the trials do, in
their own processes; tests/jobs/test_driver_imports.py): its first trial starts that much
sooner.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from jobs.data import Columns, DataError, is_missing, read_columns, split_indices, take
from jobs.datasets import resolve_uri
from jobs.drift import reference_profile
from jobs.preprocess import Preprocessor, layout_for
from jobs.spec import JobSpec, check_task, feature_columns
from jobs.tasks import Objective, Target, encode_target, infer_task
from jobs.train_data import TrainData


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


def refuse_infinities(columns: Columns) -> None:
    """A DataError naming each column with infinite values, and where. Imputation fills only
    missing values, so an infinity reached the network and the loss went NaN: the job failed
    with "try a lower learning_rate", which sent the user after the wrong cause."""
    problems = []
    for name, values in columns.items():
        if not len(values):
            continue
        if values.dtype.kind == "f":
            infinite = np.isinf(values.reshape(len(values), -1)).any(axis=1)
        elif values.dtype == object:  # a target read as Python values
            infinite = np.array([isinstance(v, float) and math.isinf(v) for v in values])
        else:
            continue
        rows = np.flatnonzero(infinite)
        if rows.size:
            shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if rows.size > 5 else "")
            problems.append(f"column '{name}' is infinite in {rows.size} row(s) ({shown})")
    if problems:
        raise DataError(
            "; ".join(problems) + ": replace or drop those values before training (the "
            "dataset's quality report lists them under 'infinite')"
        )


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
    refuse_infinities({**columns, target_name: target_values})
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
