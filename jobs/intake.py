"""A user's file read once, at registration: hard limits first, then its schema and quality
report, then the Parquet copy jobs train on.

A hostile file crashes or exhausts the process that parses it inside Arrow's or Pillow's C++
code, where Python cannot catch anything (a 5 KB Parquet file holding one list of 34 million
values segfaulted ``pyarrow.compute``; a PNG of 6000x6000 pixels took 2.3 GB). So this runs in
a child process of the API, ``python -m jobs.intake``, started by services/core/intake.py with
caps on its memory, CPU time and the size of what it writes: a crash or a cap reached ends the
child, never the API, and becomes a 422 there.

The child reads one JSON request on stdin and writes one JSON answer on stdout:
``{"ok": {format, num_rows, columns, quality, skipped, output_sha256, output_bytes}}`` or
``{"error": {"cap", "detail", "loc", "target"}}`` (exit 2) for a file it refuses (``cap``:
which cap was reached, ``memory`` or ``output``, or null for a rule; ``loc``: the column and
row, or the image file, at fault; ``target``: true when the fault is the named target's).

The limits are checked while the file is read, a batch of rows at a time, before any per-row
work: each error names the column, the row and what was too large.
"""

from __future__ import annotations

import errno
import json
import math
import os
import resource
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jobs.data import DataError, describe_schema, describe_table, file_sha256
from jobs.images import LABELS_FILE, read_image_folder
from jobs.quality import quality_report

PARQUET_MAGIC = b"PAR1"
# Rows checked at a time: small enough that a batch of legitimate rows stays a few MB.
BATCH_ROWS = 4096
# Exit status of a refusal (a file that breaks a rule): the answer on stdout says which.
REFUSED = 2


class TargetError(DataError):
    """The named target cannot be the label: the fault is the ``target`` field's, not the
    file's."""


@dataclass(frozen=True)
class Limits:
    """What one file may hold. The defaults leave room for any tabular or image data a 2-core
    API host trains on (a 3x1024x1024 colour image is 3.1 M values) and refuse what only a
    hostile or broken file has."""

    max_columns: int = 2_000
    # Numbers in one array cell (an image: channels x height x width; a sequence: its steps).
    max_cell_values: int = 4 * 1024 * 1024
    # Bytes of one text or binary cell.
    max_cell_bytes: int = 1024 * 1024


def _leaf_counts(arr: pa.Array) -> np.ndarray:
    """Values each element of ``arr`` holds, counting through nested lists (1 for a scalar).

    Computed from the offsets alone, without materialising a row: a cell of 34 million values
    costs one cumulative sum, not 34 million Python objects.
    """
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _leaf_counts(arr.values)  # the unsliced child; offsets index into it
        cum = np.concatenate([[0], np.cumsum(inner, dtype=np.int64)])
        offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        counts: np.ndarray = cum[offsets[1:]] - cum[offsets[:-1]]
        return counts
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        inner = _leaf_counts(arr.values)
        cum = np.concatenate([[0], np.cumsum(inner, dtype=np.int64)])
        starts = (arr.offset + np.arange(len(arr) + 1, dtype=np.int64)) * size
        fixed: np.ndarray = cum[starts[1:]] - cum[starts[:-1]]
        return fixed
    return np.ones(len(arr), dtype=np.int64)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _cell_bytes(arr: pa.Array) -> np.ndarray | None:
    """Bytes of each text or binary cell (0 where null); None for other columns."""
    t = arr.type
    if pa.types.is_dictionary(t):
        # Per row, not per dictionary entry, so an error names the row (a batch is small).
        return _cell_bytes(arr.dictionary_decode())
    text = pa.types.is_string(t) or pa.types.is_large_string(t)
    binary = (
        pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
    )
    if not (text or binary):
        return None
    return np.asarray(pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False))


def check_batch(batch: pa.RecordBatch, first_row: int, limits: Limits) -> None:
    """DataError naming the column and row of the first cell over a limit."""
    for name, arr in zip(batch.schema.names, batch.columns, strict=True):
        if _is_list(arr.type):
            counts = _leaf_counts(arr)
            if len(counts) and int(counts.max()) > limits.max_cell_values:
                row = int(counts.argmax())
                raise DataError(
                    f"column '{name}', row {first_row + row}: {int(counts[row])} values in one "
                    f"cell; at most {limits.max_cell_values}",
                    [name, first_row + row],
                )
            continue
        sizes = _cell_bytes(arr)
        if sizes is not None and len(sizes) and int(sizes.max()) > limits.max_cell_bytes:
            row = int(sizes.argmax())
            raise DataError(
                f"column '{name}', row {first_row + row}: a value of {int(sizes.max())} bytes; "
                f"at most {limits.max_cell_bytes}",
                [name, first_row + row],
            )


def _check_columns(count: int, limits: Limits) -> None:
    if count > limits.max_columns:
        raise DataError(f"{count} columns; at most {limits.max_columns}")


def _csv_header_columns(path: Path, limits: Limits) -> None:
    """Count the header's columns before Arrow parses anything: a header of a million
    columns is refused in microseconds, not after a table of them is built."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        head = f.read(min(limits.max_cell_bytes * 4, 16 * 1024 * 1024))
    first = head.splitlines()[0] if head else ""
    try:
        count = len(next(csv.reader([first]), []))
    except csv.Error as exc:
        raise DataError(f"the header row is not CSV: {exc}") from exc
    _check_columns(count, limits)


def _checked(batches: Any, schema: pa.Schema, limits: Limits) -> pa.Table:
    describe_schema(schema)  # a column name that is not UTF-8 is refused first
    kept: list[pa.RecordBatch] = []
    row = 0
    for batch in batches:
        check_batch(batch, row, limits)
        kept.append(batch)
        row += batch.num_rows
    return pa.Table.from_batches(kept, schema=schema)


def read_table(path: Path, limits: Limits) -> tuple[pa.Table, str]:
    """A CSV or Parquet file (told apart by Parquet's magic bytes) as a table, within limits."""
    with open(path, "rb") as f:
        head = f.read(4)
    kind = "Parquet" if head == PARQUET_MAGIC else "CSV"
    try:
        if head == PARQUET_MAGIC:
            pf = pq.ParquetFile(path)
            _check_columns(len(pf.schema_arrow), limits)
            batches = pf.iter_batches(batch_size=BATCH_ROWS)
            return _checked(batches, pf.schema_arrow, limits), "parquet"
        _csv_header_columns(path, limits)
        table = pacsv.read_csv(path)
        _checked(table.to_batches(BATCH_ROWS), table.schema, limits)
        return table, "csv"
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
        raise DataError(f"could not parse the file as {kind}: {exc}") from exc


def describe(table: pa.Table, target: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Schema and quality report; DataError naming ``target`` when it cannot be a label."""
    if table.num_rows == 0 or table.num_columns == 0:
        raise DataError("the file has no data rows")
    columns = describe_table(table)
    if target is not None:
        kinds = {c["name"]: c["kind"] for c in columns}
        if target not in kinds:
            raise TargetError(f"the file has no column '{target}'")
        if kinds[target] not in ("numeric", "categorical"):
            kind = table.schema.field(target).type
            raise TargetError(f"column '{target}' ({kind}) cannot be a label")
    return columns, quality_report(table, target)


def inspect(request: dict[str, Any]) -> dict[str, Any]:
    """Read what ``request`` names, check it, describe it and (with ``output``) write it as
    Parquet. ``request``: ``{"path", "target"?, "output"?, "image_folder"?, "limits"?}``."""
    limits = Limits(**request.get("limits", {}))
    path = Path(request["path"])
    skipped: list[dict[str, str]] = []
    if request.get("image_folder"):
        folder = read_image_folder(path, LABELS_FILE, max_cell_values=limits.max_cell_values)
        table, fmt, skipped = folder.table, "image_folder", folder.skipped
    else:
        table, fmt = read_table(path, limits)
    columns, quality = describe(table, request.get("target"))
    answer: dict[str, Any] = {
        "format": fmt,
        "num_rows": table.num_rows,
        "columns": columns,
        "quality": quality,
        "skipped": skipped,
    }
    output = request.get("output")
    if output:
        pq.write_table(table, output, compression="zstd")
        answer["output_sha256"] = file_sha256(output)
        answer["output_bytes"] = os.path.getsize(output)
    return answer


def _cap(memory_bytes: int | None, output_bytes: int | None) -> None:
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if output_bytes:
        # A write past the cap fails with EFBIG (an OSError) instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))


def _answer(doc: dict[str, Any]) -> None:
    # NaN and infinities cannot appear in JSON; a report holding one (a float column of
    # infinities, say) says null there instead.
    sys.stdout.write(json.dumps(_finite(doc), allow_nan=False))
    sys.stdout.flush()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main() -> int:
    request = json.loads(sys.stdin.read())
    caps = request.pop("caps", {})
    _cap(caps.get("memory_bytes"), caps.get("output_bytes"))
    try:
        _answer({"ok": inspect(request)})
        return 0
    except DataError as exc:
        target = isinstance(exc, TargetError)
        _answer({"error": {"cap": None, "detail": str(exc), "loc": exc.loc, "target": target}})
    except (MemoryError, pa.ArrowMemoryError):
        _answer({"error": {"cap": "memory", "detail": "out of memory", "loc": None}})
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise
        # RLIMIT_FSIZE reached while writing the Parquet copy.
        _answer({"error": {"cap": "output", "detail": str(exc), "loc": None}})
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
