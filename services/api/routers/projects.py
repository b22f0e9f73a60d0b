"""Projects: listed and read by their members; made, given quotas and members by admins."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, status
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import Admin, ServicesDep, Viewer
from services.api.openapi import errors
from services.api.serving_sync import resync_serving
from services.core import projects as project_service
from services.core import tokens as token_service
from services.core.errors import NotFound
from services.core.projects import PROJECT_NAME_PATTERN
from services.store.projects import ProjectRepository

router = APIRouter(prefix="/v1/projects", tags=["projects"])


class Quotas(BaseModel):
    """Limits on what the project uses at once; null (or absent) is no limit."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_concurrent_jobs: int | None = Field(
        None, ge=0, le=100_000, description="Jobs queued or running at once."
    )
    max_trials_per_job: int | None = Field(
        None, ge=1, le=100_000, description="Trials one job's search may run."
    )
    max_cpus: float | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="CPUs the project's jobs may hold at once: per job, max_concurrent trials "
        "x workers_per_trial x cpus_per_worker.",
    )
    max_gpus: float | None = Field(None, ge=0, le=100_000, description="GPUs, counted the same.")
    max_storage_bytes: int | None = Field(
        None, ge=0, le=2**62, description="Bytes of the project's registered datasets."
    )


class NewProject(Quotas):
    name: str = Field(pattern=PROJECT_NAME_PATTERN, description="Lower-case letters, digits, '-'.")


class NewMember(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user: str = Field(min_length=1, max_length=100, description="The user's id or name.")


def _view(services: ServicesDep, name: str, caller: Any) -> dict[str, Any]:
    with services.db.session() as s:
        project = project_service.get_project(s, caller, name)
        view = project_service.project_view(project, project_service.usage(s, project))
        view["members"] = [
            token_service.user_view(u) for u in ProjectRepository(s).members(project.id)
        ]
        return view


@router.get("")
def list_projects(services: ServicesDep, caller: Viewer) -> dict[str, Any]:
    """Your projects (an admin: every project), with their quotas."""
    with services.db.session() as s:
        rows = ProjectRepository(s).list(caller.projects)
        return {"items": [project_service.project_view(p) for p in rows]}


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(409))
def create_project(body: NewProject, services: ServicesDep, _: Admin) -> dict[str, Any]:
    quotas = body.model_dump(exclude={"name"})
    with services.db.session() as s:
        return project_service.project_view(project_service.create_project(s, body.name, quotas))


@router.get("/{name}")
def show_project(name: str, services: ServicesDep, caller: Viewer) -> dict[str, Any]:
    """A project with its quotas, what it uses now (jobs queued or running, the CPUs and
    GPUs they may hold, bytes of datasets) and its members."""
    return _view(services, name, caller)


@router.patch("/{name}")
def set_quotas(name: str, body: Quotas, services: ServicesDep, caller: Admin) -> dict[str, Any]:
    """Change quotas: the fields given (null removes a limit). Jobs already running keep
    running; new submissions are judged against the new limits."""
    with services.db.session() as s:
        project = project_service.get_project(s, caller, name)
        project_service.set_quotas(project, body.model_dump(include=body.model_fields_set))
    return _view(services, name, caller)


@router.post("/{name}/members", status_code=status.HTTP_201_CREATED)
def add_member(
    name: str,
    body: NewMember,
    request: Request,
    services: ServicesDep,
    background: BackgroundTasks,
    caller: Admin,
) -> dict[str, Any]:
    """Let a user see and work in the project (with what their role allows), its serving
    endpoints included once their token lists are pushed, right after this answer."""
    with services.db.session() as s:
        project = project_service.get_project(s, caller, name)
        user_id = project_service.user_id_by_name_or_id(s, body.user)
        added = ProjectRepository(s).add_member(project.id, user_id)
    if added:
        background.add_task(resync_serving, request, services)
    return _view(services, name, caller)


@router.delete("/{name}/members/{user_id}")
def remove_member(
    name: str,
    user_id: str,
    request: Request,
    services: ServicesDep,
    background: BackgroundTasks,
    caller: Admin,
) -> dict[str, Any]:
    """The user no longer sees the project, nor calls its serving endpoints once their token
    lists are pushed (right after this answer); what they made there stays, with the project."""
    with services.db.session() as s:
        project = project_service.get_project(s, caller, name)
        if not ProjectRepository(s).remove_member(project.id, user_id):
            raise NotFound(f"user '{user_id}' is not a member of project '{name}'")
    background.add_task(resync_serving, request, services)
    return _view(services, name, caller)
