from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from jobs.spec import NAME_PATTERN
from services.api.deps import CurrentUser, ServicesDep
from services.core.datasets import dataset_view, get_dataset, register_upload
from services.core.errors import Invalid
from services.store.repositories import DatasetRepository

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED)
def upload_dataset(
    services: ServicesDep,
    _: CurrentUser,
    file: Annotated[UploadFile, File(description="CSV (with a header row) or Parquet")],
    name: Annotated[str, Form(pattern=NAME_PATTERN)],
) -> dict[str, Any]:
    """Register a dataset from an uploaded CSV or Parquet file; it is stored as Parquet."""
    if not file.filename:
        raise Invalid("the upload has no file name", [{"loc": ["file"], "msg": "required"}])
    with services.db.session() as s:
        dataset = register_upload(
            s,
            services.settings.resolved_artifact_root,
            name,
            file.filename,
            file.file,
            services.settings.max_upload_bytes,
        )
        return dataset_view(dataset)


@router.get("")
def list_datasets(
    services: ServicesDep,
    _: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    with services.db.session() as s:
        repo = DatasetRepository(s)
        return {
            "items": [dataset_view(d) for d in repo.list(limit, offset)],
            "total": repo.count(),
            "limit": limit,
            "offset": offset,
        }


@router.get("/{dataset_id}")
def show_dataset(dataset_id: str, services: ServicesDep, _: CurrentUser) -> dict[str, Any]:
    with services.db.session() as s:
        return dataset_view(get_dataset(s, dataset_id))
