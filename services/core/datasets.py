"""Dataset registration: one row per dataset, with its schema and data quality report.

Two ways in. An upload (CSV or Parquet) is stored as Parquet in artifact storage. A URI
(``{name, uri}``; local path under an allowed root, ``s3://`` or ``gs://``; confined by
services/core/dataset_uris.py) is read where it is: a Parquet file is hashed, described and
stored by its location, never copied; a CSV is converted once into artifact storage as Parquet
(jobs read Parquet only), with the CSV's URI and sha256 kept as its source. A dataset read in
place can change after registration: the reconciler hashes it again before each launch
(:func:`verify_unchanged`) and fails the job if it no longer matches.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from jobs.data import DataError, describe_table, file_sha256, stream_sha256
from jobs.datasets import BUILTIN, BUILTIN_SCHEME
from jobs.images import LABELS_FILE, read_image_folder
from jobs.quality import quality_report
from services.core.dataset_uris import (
    Location,
    Root,
    UriRejected,
    confine,
    open_location,
    stored_location,
)
from services.core.errors import Invalid, NotFound, PayloadTooLarge
from services.core.ids import new_id
from services.core.projects import check_storage_quota
from services.store.models import Dataset, Project
from services.store.repositories import DatasetRepository

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv",)


def builtin_id(name: str) -> str:
    return f"ds_builtin_{name}"


@cache
def _builtin_quality(name: str) -> dict[str, Any]:
    # Built-in files never change, and every API start seeds a fresh database in the tests:
    # one report per process is enough.
    d = BUILTIN[name]
    return quality_report(pq.read_table(d.path), d.target)


def seed_builtins(session: Session) -> None:
    """Register the datasets that ship with the package (idempotent); rows from before the
    quality report get theirs."""
    repo = DatasetRepository(session)
    for d in BUILTIN.values():
        existing = repo.get(builtin_id(d.name))
        if existing is not None:
            if existing.quality is None:
                existing.quality = _builtin_quality(d.name)
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
                quality=_builtin_quality(d.name),
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


def _described(
    table: pa.Table, label: str, loc: str, target: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Schema and quality report of a parsed table; Invalid naming ``loc`` (or ``target``)."""
    if table.num_rows == 0 or table.num_columns == 0:
        raise Invalid(f"'{label}' has no data rows", [{"loc": [loc], "msg": "no rows"}])
    try:
        columns = describe_table(table)
    except DataError as exc:
        raise Invalid(str(exc), [{"loc": [loc], "msg": str(exc)}]) from exc
    if target is not None:
        kinds = {c["name"]: c["kind"] for c in columns}
        problem = None
        if target not in kinds:
            problem = f"'{label}' has no column '{target}'"
        elif kinds[target] not in ("numeric", "categorical"):
            problem = f"column '{target}' ({table.schema.field(target).type}) cannot be a label"
        if problem:
            raise Invalid(problem, [{"loc": ["target"], "msg": problem}])
    return columns, quality_report(table, target)


def _add_owned(session: Session, owner: Project | None, dataset: Dataset) -> Dataset:
    """Record a registered dataset in its project, within the project's storage quota."""
    if owner is not None:
        check_storage_quota(session, owner, dataset.size_bytes)
        dataset.project_id = owner.id
    return DatasetRepository(session).add(dataset)


def register_upload(
    session: Session,
    artifact_root: Path,
    name: str,
    filename: str,
    stream: BinaryIO,
    max_bytes: int,
    target: str | None = None,
    owner: Project | None = None,
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
        columns, quality = _described(table, filename, "file", target)
        dataset_id = new_id("ds")
        final = folder / f"{dataset_id}.parquet"
        pq.write_table(table, final, compression="zstd")
        dataset = _add_owned(
            session,
            owner,
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
                quality=quality,
            ),
        )
        return dataset
    except BaseException:
        if final is not None:
            final.unlink(missing_ok=True)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _format_of(loc: Location, head: bytes) -> str:
    """Parquet by its magic bytes or suffix, CSV by its suffix; anything else is refused rather
    than guessed at (a key file or a log under a root must not be parsed and described)."""
    suffix = Path(loc.path).suffix.lower()
    if head == PARQUET_MAGIC or suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise Invalid(
        f"'{loc.uri}' is neither Parquet (PAR1 magic bytes, .parquet) nor CSV (.csv)",
        [{"loc": ["uri"], "msg": "not CSV or Parquet"}],
    )


def _uri_invalid(msg: str) -> Invalid:
    return Invalid(f"uri: {msg}", [{"loc": ["uri"], "msg": msg}])


def register_uri(
    session: Session,
    artifact_root: Path,
    roots: list[Root],
    name: str,
    uri: str,
    max_bytes: int,
    target: str | None = None,
    owner: Project | None = None,
) -> Dataset:
    """Register a CSV or Parquet file by URI: confined, hashed (streamed), parsed once for its
    schema and quality report. Nothing is recorded (nor written) unless all of it succeeds.

    A local folder (a path ending in '/') holding ``labels.csv`` and PNG/JPEG files is an
    image dataset: decoded once into Parquet in artifact storage (see jobs/images.py)."""
    if uri.endswith("/") and uri.startswith("/"):
        return _register_image_folder(session, artifact_root, roots, name, uri, target, owner)
    try:
        loc = confine(uri, roots)
        with open_location(loc) as f:
            size = f.size()
            if size == 0:
                raise _uri_invalid(f"'{uri}' is empty")
            if size > max_bytes:
                raise _uri_invalid(f"'{uri}' is larger than the limit of {max_bytes} bytes")
            sha = stream_sha256(f)
            f.seek(0)
            fmt = _format_of(loc, f.read(4))
            f.seek(0)
            try:
                table = pq.read_table(f) if fmt == "parquet" else pacsv.read_csv(f)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                kind = "Parquet" if fmt == "parquet" else "CSV"
                raise _uri_invalid(f"could not parse '{uri}' as {kind}: {exc}") from exc
    except UriRejected as exc:
        raise _uri_invalid(str(exc)) from exc
    columns, quality = _described(table, uri, "uri", target)
    dataset_id = new_id("ds")
    final: Path | None = None
    try:
        if fmt == "parquet":
            stored_uri, stored_sha, stored_size = loc.uri, sha, size
        else:
            folder = artifact_root / "datasets"
            folder.mkdir(parents=True, exist_ok=True)
            final = folder / f"{dataset_id}.parquet"
            pq.write_table(table, final, compression="zstd")
            stored_uri, stored_sha = str(final), file_sha256(final)
            stored_size = final.stat().st_size
        return _add_owned(
            session,
            owner,
            Dataset(
                id=dataset_id,
                name=name,
                uri=stored_uri,
                format=fmt,
                sha256=stored_sha,
                source_sha256=sha,
                num_rows=table.num_rows,
                size_bytes=stored_size,
                columns=columns,
                builtin=False,
                source_uri=uri,
                quality=quality,
            ),
        )
    except BaseException:
        if final is not None:
            final.unlink(missing_ok=True)
        raise


def _register_image_folder(
    session: Session,
    artifact_root: Path,
    roots: list[Root],
    name: str,
    uri: str,
    target: str | None,
    owner: Project | None,
) -> Dataset:
    try:
        # The labels file is what is confined: the folder is its parent, and images are read
        # only from inside it (jobs/images.py skips anything that resolves elsewhere).
        labels = confine(uri + LABELS_FILE, roots)
    except UriRejected as exc:
        raise _uri_invalid(f"{exc} (an image folder needs a {LABELS_FILE})") from exc
    try:
        folder = read_image_folder(Path(labels.path).parent)
    except DataError as exc:
        raise _uri_invalid(str(exc)) from exc
    columns, quality = _described(folder.table, uri, "uri", target)
    # Unreadable files were left out; the report says which and why.
    quality["skipped_files"] = folder.skipped
    if folder.skipped:
        quality["warnings"].insert(
            0,
            {
                "kind": "skipped_files",
                "column": None,
                "message": f"{len(folder.skipped)} file(s) left out of the image folder: "
                + ", ".join(s["file"] for s in folder.skipped[:10]),
            },
        )
    dataset_id = new_id("ds")
    target_dir = artifact_root / "datasets"
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / f"{dataset_id}.parquet"
    pq.write_table(folder.table, final, compression="zstd")
    try:
        return _add_owned(
            session,
            owner,
            Dataset(
                id=dataset_id,
                name=name,
                uri=str(final),
                format="image_folder",
                sha256=file_sha256(final),
                source_sha256=file_sha256(Path(labels.path)),
                num_rows=folder.table.num_rows,
                size_bytes=final.stat().st_size,
                columns=columns,
                builtin=False,
                source_uri=uri,
                quality=quality,
            ),
        )
    except BaseException:
        final.unlink(missing_ok=True)
        raise


def read_in_place(uri: str, artifact_root: Path) -> bool:
    """Whether jobs read the dataset stored as ``uri`` where its owner keeps it, so it can
    change after registration (uploads and built-ins are ours and never change)."""
    if uri.startswith(BUILTIN_SCHEME):
        return False
    loc = stored_location(uri)
    return loc.scheme != "file" or not Path(loc.path).is_relative_to(artifact_root)


def verify_unchanged(uri: str, sha256: str) -> str | None:
    """None when the dataset at ``uri`` still hashes to ``sha256``; otherwise why not."""
    try:
        with open_location(stored_location(uri)) as f:
            now = stream_sha256(f)
    except (UriRejected, OSError) as exc:
        return f"the dataset can no longer be read: {exc}"
    if now != sha256:
        return (
            f"the dataset changed after it was registered (sha256 {sha256}, now {now}); "
            "register it again to train on the new content"
        )
    return None


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    dataset = DatasetRepository(session).get(dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset '{dataset_id}'")
    return dataset


def dataset_view(d: Dataset, detail: bool = False) -> dict[str, Any]:
    """A dataset as the API shows it; ``detail`` adds the quality report (kept out of lists,
    where a report per row would make a page heavy)."""
    view: dict[str, Any] = {
        "id": d.id,
        "name": d.name,
        "format": d.format,
        "sha256": d.sha256,
        "source_sha256": d.source_sha256,
        "num_rows": d.num_rows,
        "size_bytes": d.size_bytes,
        "columns": d.columns,
        "builtin": d.builtin,
        "project_id": d.project_id,
        "description": d.description,
        "license": d.license,
        "source_uri": d.source_uri,
        "created_at": d.created_at.isoformat(),
    }
    if detail:
        view["quality"] = d.quality
    return view
