from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from jobs.spec import JobSpec
from services.api.deps import CurrentUser

router = APIRouter(prefix="/v1/spec", tags=["spec"])


@router.get("/schema")
def spec_schema(_: CurrentUser) -> dict[str, Any]:
    """JSON Schema of the job spec accepted by POST /v1/jobs."""
    return JobSpec.model_json_schema()
