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

import contextlib
import hashlib
import os
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from jobs.data import describe_table, file_sha256, stream_sha256
from jobs.datasets import BUILTIN, BUILTIN_SCHEME
from jobs.images import LABELS_FILE
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
from services.core.intake import IntakeCaps, OutputCapReached, inspect_file
from services.core.projects import check_storage_quota, over_storage_quota
from services.store.models import Dataset, Project
from services.store.projects import ProjectRepository
from services.store.repositories import DatasetRepository

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv",)
# Files a registration writes before it is done; a killed API leaves them (sweep_stale_uploads).
TEMP_PREFIX = ".upload-"


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


def _copy_limited(src: BinaryIO, dst: BinaryIO, limit: int) -> tuple[int, str]:
    """Copy at most ``limit`` bytes a block at a time (never the whole file in memory), and
    hash them on the way: (size, sha256)."""
    total = 0
    h = hashlib.sha256()
    while chunk := src.read(1 << 20):
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"upload exceeds the limit of {limit} bytes",
                [{"loc": ["file"], "msg": f"larger than {limit} bytes"}],
            )
        h.update(chunk)
        dst.write(chunk)
    return total, h.hexdigest()


def _storage_room(session: Session, owner: Project | None) -> int | None:
    """Bytes the project may still store (None: no quota). A project with no room at all is
    refused here, before a file is read; the rest is the cap on the Parquet copy's size."""
    if owner is None or owner.max_storage_bytes is None:
        return None
    in_use = ProjectRepository(session).dataset_bytes(owner.id)
    over_storage_quota(owner, in_use, 1)
    return owner.max_storage_bytes - in_use


def _inspected(
    session: Session,
    owner: Project | None,
    source: Path,
    caps: IntakeCaps,
    *,
    field: str,
    target: str | None,
    output: Path | None,
    image_folder: bool = False,
) -> dict[str, Any]:
    """The child's findings on ``source`` (services/core/intake.py), its Parquet copy at
    ``output`` capped at what is left of the owner's storage quota."""
    room = _storage_room(session, owner)
    try:
        return inspect_file(
            source,
            caps,
            field=field,
            target=target,
            output=output,
            output_bytes=room,
            image_folder=image_folder,
        )
    except OutputCapReached:
        assert owner is not None and room is not None  # only a quota sets the cap
        # The copy passed what was left: at least one byte more than the room.
        over_storage_quota(owner, (owner.max_storage_bytes or 0) - room, room + 1)
        raise  # not reached: the line above raises


def _add_owned(session: Session, owner: Project | None, dataset: Dataset) -> Dataset:
    """Record a registered dataset in its project, within the project's storage quota."""
    if owner is not None:
        check_storage_quota(session, owner, dataset.size_bytes)
        dataset.project_id = owner.id
    return DatasetRepository(session).add(dataset)


def _dataset_folder(artifact_root: Path) -> Path:
    folder = artifact_root / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sweep_stale_uploads(artifact_root: Path, older_than_s: float = 3600) -> int:
    """Remove temporary files a registration left behind when its process was killed (every
    other failure removes its own): those older than ``older_than_s``, so an upload that
    another API process is writing right now is left alone. Returns how many went."""
    folder = artifact_root / "datasets"
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for path in folder.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def register_upload(
    session: Session,
    artifact_root: Path,
    name: str,
    filename: str,
    stream: BinaryIO,
    max_bytes: int,
    caps: IntakeCaps,
    target: str | None = None,
    owner: Project | None = None,
) -> Dataset:
    """Store an uploaded CSV or Parquet file as Parquet and record it.

    The file is read in a child process (services/core/intake.py) before anything is
    recorded, and every file written is removed again on any failure, so a rejected upload
    leaves neither a row nor a file.
    """
    folder = _dataset_folder(artifact_root)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX)
    tmp_path = Path(tmp)
    dataset_id = new_id("ds")
    final = folder / f"{dataset_id}.parquet"
    try:
        with os.fdopen(fd, "wb") as out:
            size, source_sha = _copy_limited(stream, out, max_bytes)
        if size == 0:
            raise Invalid("the uploaded file is empty", [{"loc": ["file"], "msg": "empty file"}])
        found = _inspected(
            session, owner, tmp_path, caps, field="file", target=target, output=final
        )
        return _add_owned(
            session,
            owner,
            Dataset(
                id=dataset_id,
                name=name,
                uri=str(final),
                format=found["format"],
                sha256=found["output_sha256"],
                source_sha256=source_sha,
                num_rows=found["num_rows"],
                size_bytes=found["output_bytes"],
                columns=found["columns"],
                builtin=False,
                quality=found["quality"],
            ),
        )
    except BaseException:
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
    caps: IntakeCaps,
    target: str | None = None,
    owner: Project | None = None,
) -> Dataset:
    """Register a CSV or Parquet file by URI: confined, copied to a private temporary file
    while hashed (so the child reads exactly the bytes hashed, and never a path a user
    chose), read once in a child process for its schema and quality report. Nothing is
    recorded (nor kept) unless all of it succeeds.

    A local folder (a path ending in '/') holding ``labels.csv`` and PNG/JPEG files is an
    image dataset: decoded once into Parquet in artifact storage (see jobs/images.py)."""
    if uri.endswith("/") and uri.startswith("/"):
        return _register_image_folder(session, artifact_root, roots, name, uri, caps, target, owner)
    folder = _dataset_folder(artifact_root)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX)
    tmp_path = Path(tmp)
    dataset_id = new_id("ds")
    final = folder / f"{dataset_id}.parquet"
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                loc = confine(uri, roots)
                with open_location(loc) as f:
                    size = f.size()
                    if size == 0:
                        raise _uri_invalid(f"'{uri}' is empty")
                    if size > max_bytes:
                        raise _uri_invalid(f"'{uri}' is larger than the limit of {max_bytes} bytes")
                    fmt = _format_of(loc, f.read(4))
                    f.seek(0)
                    size, sha = _copy_limited(f, out, max_bytes)
        except UriRejected as exc:
            raise _uri_invalid(str(exc)) from exc
        except PayloadTooLarge:
            raise _uri_invalid(f"'{uri}' is larger than the limit of {max_bytes} bytes") from None
        # Parquet is read where it is, so only a CSV gets a copy (and counts it).
        output = final if fmt == "csv" else None
        found = _inspected(
            session, owner, tmp_path, caps, field="uri", target=target, output=output
        )
        if found["format"] != fmt:
            raise _uri_invalid(f"'{uri}' is named {fmt} but holds {found['format']}")
        if output is None:
            stored_uri, stored_sha, stored_size = loc.uri, sha, size
        else:
            stored_uri, stored_sha = str(final), found["output_sha256"]
            stored_size = found["output_bytes"]
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
                num_rows=found["num_rows"],
                size_bytes=stored_size,
                columns=found["columns"],
                builtin=False,
                source_uri=uri,
                quality=found["quality"],
            ),
        )
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def _register_image_folder(
    session: Session,
    artifact_root: Path,
    roots: list[Root],
    name: str,
    uri: str,
    caps: IntakeCaps,
    target: str | None,
    owner: Project | None,
) -> Dataset:
    try:
        # The labels file is what is confined: the folder is its parent, and images are read
        # only from inside it (jobs/images.py skips anything that resolves elsewhere).
        labels = confine(uri + LABELS_FILE, roots)
    except UriRejected as exc:
        raise _uri_invalid(f"{exc} (an image folder needs a {LABELS_FILE})") from exc
    final = _dataset_folder(artifact_root) / f"{new_id('ds')}.parquet"
    try:
        found = _inspected(
            session,
            owner,
            Path(labels.path).parent,
            caps,
            field="uri",
            target=target,
            output=final,
            image_folder=True,
        )
        quality = found["quality"]
        # Unreadable files were left out; the report says which and why.
        skipped = quality["skipped_files"] = found["skipped"]
        if skipped:
            quality["warnings"].insert(
                0,
                {
                    "kind": "skipped_files",
                    "column": None,
                    "message": f"{len(skipped)} file(s) left out of the image folder: "
                    + ", ".join(s["file"] for s in skipped[:10]),
                },
            )
        return _add_owned(
            session,
            owner,
            Dataset(
                id=final.stem,
                name=name,
                uri=str(final),
                format="image_folder",
                sha256=found["output_sha256"],
                source_sha256=file_sha256(Path(labels.path)),
                num_rows=found["num_rows"],
                size_bytes=found["output_bytes"],
                columns=found["columns"],
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
