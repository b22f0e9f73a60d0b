"""Dataset registration: uploads become Parquet files in artifact storage plus one row."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from jobs.data import DataError, describe_table, file_sha256
from jobs.datasets import BUILTIN
from services.core.errors import Invalid, NotFound, PayloadTooLarge
from services.core.ids import new_id
from services.store.models import Dataset
from services.store.repositories import DatasetRepository

PARQUET_MAGIC = b"PAR1"


def builtin_id(name: str) -> str:
    return f"ds_builtin_{name}"


def seed_builtins(session: Session) -> None:
    """Register the datasets that ship with the package (idempotent)."""
    repo = DatasetRepository(session)
    for d in BUILTIN.values():
        if repo.get(builtin_id(d.name)) is not None:
            continue
        meta = pq.read_metadata(d.path)
        table = pq.read_table(d.path)
        repo.add(
            Dataset(
                id=builtin_id(d.name),
                name=d.name,
                uri=d.uri,
                format="parquet",
                sha256=file_sha256(d.path),
                source_sha256=None,
                num_rows=meta.num_rows,
                size_bytes=d.path.stat().st_size,
                columns=describe_table(table),
                builtin=True,
                description=d.description,
                license=d.license,
            )
        )


def _copy_limited(src: BinaryIO, dst: BinaryIO, limit: int) -> int:
    total = 0
    while chunk := src.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"upload exceeds the limit of {limit} bytes",
                [{"loc": ["file"], "msg": f"larger than {limit} bytes"}],
            )
        dst.write(chunk)
    return total


def _read_table(path: Path, filename: str) -> tuple[pa.Table, str]:
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head == PARQUET_MAGIC:
            return pq.read_table(path), "parquet"
        return pacsv.read_csv(path), "csv"
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        kind = "Parquet" if head == PARQUET_MAGIC else "CSV"
        raise Invalid(
            f"could not parse '{filename}' as {kind}: {exc}",
            [{"loc": ["file"], "msg": f"unparsable {kind}: {exc}"}],
        ) from exc


def register_upload(
    session: Session,
    artifact_root: Path,
    name: str,
    filename: str,
    stream: BinaryIO,
    max_bytes: int,
) -> Dataset:
    """Store an uploaded CSV or Parquet file as Parquet and record it.

    The file is parsed completely before anything is recorded, and removed again if the
    row cannot be written, so a rejected upload leaves neither a row nor a file.
    """
    folder = artifact_root / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    tmp_path = Path(tmp)
    final: Path | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            size = _copy_limited(stream, out, max_bytes)
        if size == 0:
            raise Invalid("the uploaded file is empty", [{"loc": ["file"], "msg": "empty file"}])
        source_sha = file_sha256(tmp_path)
        table, fmt = _read_table(tmp_path, filename)
        if table.num_rows == 0 or table.num_columns == 0:
            raise Invalid(
                f"'{filename}' has no data rows",
                [{"loc": ["file"], "msg": "no rows"}],
            )
        try:
            columns = describe_table(table)
        except DataError as exc:
            raise Invalid(str(exc), [{"loc": ["file"], "msg": str(exc)}]) from exc
        dataset_id = new_id("ds")
        final = folder / f"{dataset_id}.parquet"
        pq.write_table(table, final, compression="zstd")
        dataset = DatasetRepository(session).add(
            Dataset(
                id=dataset_id,
                name=name,
                uri=str(final),
                format=fmt,
                sha256=file_sha256(final),
                source_sha256=source_sha,
                num_rows=table.num_rows,
                size_bytes=final.stat().st_size,
                columns=columns,
                builtin=False,
            )
        )
        return dataset
    except BaseException:
        if final is not None:
            final.unlink(missing_ok=True)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = DatasetRepository(session).get(dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset '{dataset_id}'")
    return dataset


def dataset_view(d: Dataset) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "format": d.format,
        "sha256": d.sha256,
        "source_sha256": d.source_sha256,
        "num_rows": d.num_rows,
        "size_bytes": d.size_bytes,
        "columns": d.columns,
        "builtin": d.builtin,
        "description": d.description,
        "license": d.license,
        "created_at": d.created_at.isoformat(),
    }
