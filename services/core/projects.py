"""Projects: who sees what, and how much a project may use at once.

Datasets, jobs and audits carry their project; models, endpoints and scoring runs belong to
their job's project. A caller sees the projects their user is a member of (an admin sees
all); anything in another project does not exist for them: its id answers 404 with the same
text as an id that was never made, so an id cannot be probed. A resource only ever refers to
resources of its own project, or to built-in datasets (which are everyone's): a job's
dataset and parent model, a scoring run's dataset, an audit's dataset.

Quotas (per project, none by default) are checked when something new would use them, under a
lock on the project's row, so racing submissions cannot together pass a limit that each
passes alone. A request beyond a quota is refused with 429 ``quota_exceeded`` saying the
limit, what is in use and what was asked; it is not queued (a queued job would hold its place
in line and surprise its owner later; refusing lets the caller decide).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from jobs.spec import JobSpec
from services.core.auth import Principal
from services.core.errors import Conflict, Invalid, NotFound, QuotaExceeded
from services.core.ids import new_id
from services.store.models import Project
from services.store.projects import ProjectRepository
from services.store.repositories import Scope, UserRepository

DEFAULT_PROJECT = "default"
DEFAULT_PROJECT_ID = "prj_default"  # made by migration 0009
PROJECT_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"

QUOTAS = (
    "max_concurrent_jobs",
    "max_trials_per_job",
    "max_cpus",
    "max_gpus",
    "max_storage_bytes",
)


def scope(principal: Principal) -> Scope:
    """What list queries may show the caller."""
    return principal.projects


def project_view(p: Project, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": p.id,
        "name": p.name,
        "created_at": p.created_at.isoformat(),
        "quotas": {q: getattr(p, q) for q in QUOTAS},
    }
    if usage is not None:
        view["usage"] = usage
    return view


# Visibility


def _lookup(repo: ProjectRepository, kind: str) -> Callable[[str], str | None]:
    return {
        "job": repo.of_job,
        "dataset": repo.of_dataset,
        "audit": repo.of_audit,
        "model": repo.of_model,
        "endpoint": repo.of_endpoint,
        "scoring run": repo.of_scoring_run,
    }[kind]


def require_visible(
    session: Session,
    principal: Principal,
    kind: str,
    key: str,
    loc: list[Any] | None = None,
) -> str:
    """The project of the ``kind`` named ``key`` ("" for a built-in dataset); NotFound, worded
    as for an id never made, when it does not exist or belongs to a project the caller does
    not see. ``loc`` names the request field that held the id, when it came in a body."""
    project_id = _lookup(ProjectRepository(session), kind)(key)
    if project_id is None or not principal.sees(project_id):
        text = f"no {kind} '{key}'"
        raise NotFound(text, [{"loc": loc, "msg": text}] if loc else None)
    return project_id


def get_project(session: Session, principal: Principal, name: str) -> Project:
    project = ProjectRepository(session).by_name(name)
    if project is None or not principal.sees(project.id):
        raise NotFound(f"no project '{name}'")
    return project


def project_for_new(
    session: Session, principal: Principal, name: str | None, loc: list[Any]
) -> Project:
    """The project something new goes into: the one named, which the caller must be a member
    of (an admin may use any), or else the caller's only project (an admin's: "default")."""
    repo = ProjectRepository(session)
    if name is not None:
        project = repo.by_name(name)
        if project is None or not principal.sees(project.id):
            text = f"no project '{name}'"
            raise NotFound(text, [{"loc": loc, "msg": text}])
        return project
    if principal.projects is None:
        default = repo.get(DEFAULT_PROJECT_ID)
        assert default is not None, "migration 0009 makes the default project"
        return default
    mine = repo.list(principal.projects)
    if len(mine) == 1:
        return mine[0]
    if not mine:
        raise Invalid(
            "you are a member of no project: ask an admin to add you to one",
            [{"loc": loc, "msg": "no project"}],
        )
    names = ", ".join(p.name for p in mine)
    raise Invalid(
        f"you are a member of several projects ({names}): say which",
        [{"loc": loc, "msg": f"required: one of {names}"}],
    )


def same_project(owner: str, referenced: str, kind: str, key: str, loc: list[Any]) -> None:
    """A resource refers only to its own project's resources or to built-ins ("")."""
    if referenced and referenced != owner:
        text = f"no {kind} '{key}' in this project"
        raise NotFound(text, [{"loc": loc, "msg": text}])


# Administration


def create_project(session: Session, name: str, quotas: dict[str, Any]) -> Project:
    repo = ProjectRepository(session)
    if repo.by_name(name) is not None:
        raise Conflict(f"a project named '{name}' exists", [{"loc": ["name"], "msg": "taken"}])
    return repo.add(Project(id=new_id("prj"), name=name, **quotas))


def set_quotas(project: Project, quotas: dict[str, Any]) -> None:
    for key, value in quotas.items():
        if key not in QUOTAS:
            raise Invalid(f"unknown quota '{key}'", [{"loc": [key], "msg": "unknown quota"}])
        setattr(project, key, value)


def user_id_by_name_or_id(session: Session, who: str) -> str:
    users = UserRepository(session)
    user = users.get(who) or users.by_name(who)
    if user is None:
        raise NotFound(f"no user '{who}'", [{"loc": ["user"], "msg": "not found"}])
    return user.id


def names_of(session: Session, project_ids: frozenset[str] | None) -> list[str]:
    return [p.name for p in ProjectRepository(session).list(project_ids)]


# Quotas


def _job_demand(spec: dict[str, Any]) -> dict[str, float]:
    """What a job may hold at once: its concurrent trials, each with all its workers."""
    search, res = spec.get("search") or {}, spec.get("resources") or {}
    workers = float(res.get("workers_per_trial", 1))
    concurrent = float(search.get("max_concurrent", 1))
    return {
        "cpus": concurrent * workers * float(res.get("cpus_per_worker", 1.0)),
        "gpus": concurrent * workers * float(res.get("gpus_per_worker", 0.0)),
    }


def usage(session: Session, project: Project) -> dict[str, Any]:
    repo = ProjectRepository(session)
    active = repo.active_jobs(project.id)
    demand = [_job_demand(j.spec) for j in active]
    return {
        "concurrent_jobs": len(active),
        "cpus": sum(d["cpus"] for d in demand),
        "gpus": sum(d["gpus"] for d in demand),
        "storage_bytes": repo.dataset_bytes(project.id),
    }


def _over(project: Project, quota: str, what: str, in_use: float, requested: float) -> None:
    limit = getattr(project, quota)
    if limit is not None and in_use + requested > limit:
        raise QuotaExceeded(
            f"project '{project.name}' quota {quota}: {what} {in_use:g} in use + {requested:g} "
            f"asked > {limit:g}",
            quota,
            limit,
            in_use,
            requested,
        )


def check_job_quotas(session: Session, project: Project, spec: JobSpec) -> None:
    """Call inside the unit of work that adds the job: with a quota on what is in use, it
    locks the project until then. Without one nothing is locked or counted: a project with no
    such quota does not serialise its submissions (benchmarks/api_load.py)."""
    trials = spec.search.trial_count
    if project.max_trials_per_job is not None and trials > project.max_trials_per_job:
        raise QuotaExceeded(
            f"project '{project.name}' quota max_trials_per_job: the job asks for {trials} "
            f"trials > {project.max_trials_per_job}",
            "max_trials_per_job",
            project.max_trials_per_job,
            0,
            trials,
        )
    in_use_quotas = (project.max_concurrent_jobs, project.max_cpus, project.max_gpus)
    if all(q is None for q in in_use_quotas):
        return
    ProjectRepository(session).lock(project.id)
    now = usage(session, project)
    demand = _job_demand(spec.model_dump(mode="json"))
    _over(project, "max_concurrent_jobs", "jobs", now["concurrent_jobs"], 1)
    _over(project, "max_cpus", "CPUs", now["cpus"], demand["cpus"])
    if demand["gpus"]:
        _over(project, "max_gpus", "GPUs", now["gpus"], demand["gpus"])


def check_storage_quota(session: Session, project: Project, new_bytes: int) -> None:
    if project.max_storage_bytes is None:
        return
    ProjectRepository(session).lock(project.id)
    in_use = ProjectRepository(session).dataset_bytes(project.id)
    over_storage_quota(project, in_use, new_bytes)


def over_storage_quota(project: Project, in_use: int, new_bytes: int) -> None:
    """QuotaExceeded when ``new_bytes`` more would pass the project's storage quota."""
    _over(project, "max_storage_bytes", "bytes of datasets", in_use, new_bytes)
