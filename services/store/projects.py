"""Queries on projects, their members, what they own and what they use; kept beside
``repositories.py`` in the same style: services call these, never ``select``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from services.store.models import (
    Audit,
    Dataset,
    Endpoint,
    Job,
    ModelVersion,
    Project,
    ProjectMember,
    ScoringRun,
    User,
    utcnow,
)
from services.store.repositories import ACTIVE_STATUSES, Scope


class ProjectRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, project_id: str) -> Project | None:
        return self.s.get(Project, project_id)

    def by_name(self, name: str) -> Project | None:
        return self.s.scalars(select(Project).where(Project.name == name)).first()

    def list(self, projects: Scope = None) -> Sequence[Project]:
        q = select(Project).order_by(Project.name)
        if projects is not None:
            q = q.where(Project.id.in_(projects))
        return self.s.scalars(q).all()

    def add(self, project: Project) -> Project:
        self.s.add(project)
        self.s.flush()
        return project

    def lock(self, project_id: str) -> None:
        """Serialise what checks a quota and then uses it, per project: a row lock on
        PostgreSQL; on SQLite the write takes the database's one write lock. Held until the
        caller's unit of work ends."""
        self.s.execute(update(Project).where(Project.id == project_id).values(name=Project.name))

    # Membership

    def ids_of(self, user_id: str) -> frozenset[str]:
        q = select(ProjectMember.project_id).where(ProjectMember.user_id == user_id)
        return frozenset(self.s.scalars(q).all())

    def members(self, project_id: str) -> Sequence[User]:
        q = (
            select(User)
            .join(ProjectMember, ProjectMember.user_id == User.id)
            .where(ProjectMember.project_id == project_id)
            .order_by(User.name)
        )
        return self.s.scalars(q).all()

    def is_member(self, project_id: str, user_id: str) -> bool:
        return self.s.get(ProjectMember, (project_id, user_id)) is not None

    def add_member(self, project_id: str, user_id: str) -> bool:
        if self.is_member(project_id, user_id):
            return False
        self.s.add(ProjectMember(project_id=project_id, user_id=user_id, created_at=utcnow()))
        self.s.flush()
        return True

    def remove_member(self, project_id: str, user_id: str) -> bool:
        gone = self.s.execute(
            delete(ProjectMember).where(
                ProjectMember.project_id == project_id, ProjectMember.user_id == user_id
            )
        )
        return bool(getattr(gone, "rowcount", 0))

    # What a project uses now

    def active_jobs(self, project_id: str) -> Sequence[Job]:
        q = select(Job).where(Job.project_id == project_id, Job.status.in_(ACTIVE_STATUSES))
        return self.s.scalars(q).all()

    def dataset_bytes(self, project_id: str) -> int:
        q = select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
            Dataset.project_id == project_id
        )
        return int(self.s.scalar(q) or 0)

    # Which project a resource belongs to: None when the resource does not exist; for a
    # dataset, "" when it is a built-in (everyone's).

    def of_job(self, job_id: str) -> str | None:
        return self.s.scalar(select(Job.project_id).where(Job.id == job_id))

    def of_dataset(self, dataset_id: str) -> str | None:
        row = self.s.execute(select(Dataset.project_id).where(Dataset.id == dataset_id)).first()
        return None if row is None else (row[0] or "")

    def of_audit(self, audit_id: str) -> str | None:
        return self.s.scalar(select(Audit.project_id).where(Audit.id == audit_id))

    def of_model(self, model_id: str) -> str | None:
        q = select(Job.project_id).join(ModelVersion, ModelVersion.job_id == Job.id)
        return self.s.scalar(q.where(ModelVersion.id == model_id))

    def of_endpoint(self, name: str) -> str | None:
        q = (
            select(Job.project_id)
            .join(ModelVersion, ModelVersion.job_id == Job.id)
            .join(Endpoint, Endpoint.model_id == ModelVersion.id)
        )
        return self.s.scalar(q.where(Endpoint.name == name))

    def of_scoring_run(self, run_id: str) -> str | None:
        q = (
            select(Job.project_id)
            .join(ModelVersion, ModelVersion.job_id == Job.id)
            .join(ScoringRun, ScoringRun.model_id == ModelVersion.id)
        )
        return self.s.scalar(q.where(ScoringRun.id == run_id))
