from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from jobs.spec import NAME_PATTERN
from services.api.deps import MAX_OFFSET, CurrentUser, Services, ServicesDep
from services.api.openapi import errors
from services.api.scope import VisibleDataset
from services.core.auth import Principal
from services.core.dataset_uris import MAX_URI_CHARS
from services.core.datasets import dataset_view, get_dataset, register_upload, register_uri
from services.core.errors import Invalid, PayloadTooLarge, UnsupportedMediaType
from services.core.intake import IntakeCaps
from services.core.projects import PROJECT_NAME_PATTERN, project_for_new
from services.store.repositories import DatasetRepository

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

# A {name, uri, target} document is a few hundred bytes; nothing legitimate comes near this.
MAX_JSON_BYTES = 64 * 1024

TARGET_DESCRIPTION = (
    "The label column, if there is one: the quality report then gives its class balance (and "
    "warns when the smallest class is under a tenth of the largest)."
)
_TARGET = Field(None, description=TARGET_DESCRIPTION)
PROJECT_DESCRIPTION = "The project it belongs to; default: your only project (an admin's: default)."
_PROJECT = Field(None, pattern=PROJECT_NAME_PATTERN, description=PROJECT_DESCRIPTION)


class RegisterByUri(BaseModel):
    """A dataset registered where it is, by URI."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Name shown in listings.")
    uri: str = Field(
        min_length=1,
        max_length=MAX_URI_CHARS,
        description="An absolute local path, s3://bucket/key or gs://bucket/key, under one of "
        "the roots the operator allows (CRUCIBLE_DATASET_ROOTS); CSV (.csv) or Parquet. No "
        "percent-escapes, '..', backslashes, query strings, file:// or http(s)://.",
    )
    target: str | None = _TARGET
    project: str | None = _PROJECT


class UploadFields(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    target: str | None = _TARGET
    project: str | None = _PROJECT


DESCRIPTION = """\
Register a dataset, by upload or by URI: the request's `Content-Type` chooses.

- `multipart/form-data` with `file` (CSV with a header row, or Parquet), `name` and an optional
  `target`: the file is stored as Parquet in artifact storage.
- `application/json` with `{"name", "uri", "target"?}`: the file is read where it is. `uri` is
  an absolute local path, `s3://bucket/key` or `gs://bucket/key`, and must lie under a root the
  operator allows (`CRUCIBLE_DATASET_ROOTS`; none by default). Parquet (magic bytes or
  `.parquet`) is hashed, described and stored by location, not copied; jobs read it there and
  a job whose file changed since registration fails before it starts. CSV (`.csv`) is converted
  once into artifact storage as Parquet; its URI and sha256 are kept as `source_uri` and
  `source_sha256`. A URI that is outside the roots once fully percent-decoded (`..`, `%2e%2e`,
  `%252e`), has a backslash, leads out through a symlink, or uses `file://`, `http(s)://` or
  another scheme is a 422 naming `uri`, and nothing is stored.

One path for both bodies, not a second route: a dataset is one resource however its bytes
arrive. Either way the response carries the schema (with array shapes), row count, sha256 and
the data quality report (`quality`: missing rates, duplicate rows, constant columns, groups of
low-cardinality columns, label balance and warnings, among them groups under 30 rows).
"""

_UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file", "name"],
    "additionalProperties": False,
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "CSV or Parquet"},
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "target": {"type": "string", "description": TARGET_DESCRIPTION},
        "project": {
            "type": "string",
            "pattern": PROJECT_NAME_PATTERN,
            "description": PROJECT_DESCRIPTION,
        },
    },
}


def _fields(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]


async def _json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise PayloadTooLarge(f"a JSON body is at most {MAX_JSON_BYTES} bytes")
    return bytes(body)


def _by_uri(services: Services, user: Principal, req: RegisterByUri) -> dict[str, Any]:
    settings = services.settings
    with services.db.session() as s:
        owner = project_for_new(s, user, req.project, ["project"])
        dataset = register_uri(
            s,
            settings.resolved_artifact_root,
            settings.resolved_dataset_roots,
            req.name,
            req.uri,
            settings.max_upload_bytes,
            IntakeCaps.of(settings),
            req.target,
            owner,
        )
        return dataset_view(dataset, detail=True)


def _by_upload(
    services: Services, user: Principal, fields: UploadFields, file: UploadFile
) -> dict[str, Any]:
    assert file.filename is not None  # checked by the caller
    with services.db.session() as s:
        owner = project_for_new(s, user, fields.project, ["project"])
        dataset = register_upload(
            s,
            services.settings.resolved_artifact_root,
            fields.name,
            file.filename,
            file.file,
            services.settings.max_upload_bytes,
            IntakeCaps.of(services.settings),
            fields.target,
            owner,
        )
        return dataset_view(dataset, detail=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Register a dataset (upload or URI)",
    description=DESCRIPTION,
    responses=errors(415),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _UPLOAD_SCHEMA},
                "application/json": {"schema": RegisterByUri.model_json_schema()},
            },
        }
    },
)
async def create_dataset(
    request: Request, services: ServicesDep, user: CurrentUser
) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json":
        try:
            req = RegisterByUri.model_validate_json(await _json_body(request))
        except ValidationError as exc:
            raise Invalid("the request is invalid", _fields(exc)) from exc
        # Hashing and parsing block: off the event loop.
        return await run_in_threadpool(_by_uri, services, user, req)
    if media == "multipart/form-data":
        async with request.form(max_files=1, max_fields=10) as form:
            file = form.get("file")
            problems: list[dict[str, Any]] = []
            problems += [
                {"loc": [k], "msg": "Extra inputs are not permitted"}
                for k in dict.fromkeys(form.keys())
                if k not in _UPLOAD_SCHEMA["properties"]
            ]
            if not isinstance(file, UploadFile):
                problems.append({"loc": ["file"], "msg": "Field required"})
            elif not file.filename:
                problems.append({"loc": ["file"], "msg": "the upload has no file name"})
            raw = {
                k: v
                for k in ("name", "target", "project")
                if isinstance(v := form.get(k), str) and v
            }
            try:
                fields = UploadFields.model_validate(raw)
            except ValidationError as exc:
                problems += _fields(exc)
            if problems or not isinstance(file, UploadFile):
                raise Invalid("the request is invalid", problems)
            return await run_in_threadpool(_by_upload, services, user, fields, file)
    raise UnsupportedMediaType(
        f"send multipart/form-data (an upload) or application/json (a URI), not '{media}'"
    )


@router.get("")
def list_datasets(
    services: ServicesDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    """Built-in datasets, then the newest first; without their quality reports (see
    `GET /v1/datasets/{id}`)."""
    with services.db.session() as s:
        repo = DatasetRepository(s)
        return {
            "items": [dataset_view(d) for d in repo.list(limit, offset, user.projects)],
            "total": repo.count(user.projects),
            "limit": limit,
            "offset": offset,
        }


@router.get("/{dataset_id}")
def show_dataset(
    _: CurrentUser, dataset_id: VisibleDataset, services: ServicesDep
) -> dict[str, Any]:
    """One dataset with its data quality report (`quality`)."""
    with services.db.session() as s:
        return dataset_view(get_dataset(s, dataset_id), detail=True)
