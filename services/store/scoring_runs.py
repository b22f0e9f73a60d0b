"""Queries on scoring runs (batch scoring), kept beside ``repositories.py`` in the same style:
services call these, never ``select``; they only ``flush``, the caller's unit of work commits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.store.models import Job, ModelVersion, ScoringRun
from services.store.repositories import ACTIVE_STATUSES, Scope


def _filtered(q: Any, status: str | None, model_id: str | None, projects: Scope) -> Any:
    if status is not None:
        q = q.where(ScoringRun.status == status)
    if model_id is not None:
        q = q.where(ScoringRun.model_id == model_id)
    if projects is not None:
        # A run belongs to its model's job's project.
        q = (
            q.join(ModelVersion, ModelVersion.id == ScoringRun.model_id)
            .join(Job, Job.id == ModelVersion.job_id)
            .where(Job.project_id.in_(projects))
        )
    return q


class ScoringRunRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, run_id: str, for_update: bool = False) -> ScoringRun | None:
        if for_update:
            q = select(ScoringRun).where(ScoringRun.id == run_id).with_for_update()
            return self.s.scalars(q).first()
        return self.s.get(ScoringRun, run_id)

    def list(
        self,
        status: str | None,
        model_id: str | None,
        limit: int,
        offset: int,
        projects: Scope = None,
    ) -> Sequence[ScoringRun]:
        q = select(ScoringRun).order_by(ScoringRun.created_at.desc(), ScoringRun.id.desc())
        q = _filtered(q, status, model_id, projects)
        return self.s.scalars(q.limit(limit).offset(offset)).all()

    def count(self, status: str | None, model_id: str | None, projects: Scope = None) -> int:
        q = _filtered(select(func.count()).select_from(ScoringRun), status, model_id, projects)
        return self.s.scalar(q) or 0

    def active(self) -> Sequence[ScoringRun]:
        q = select(ScoringRun).where(ScoringRun.status.in_(ACTIVE_STATUSES))
        return self.s.scalars(q.order_by(ScoringRun.created_at)).all()

    def add(self, run: ScoringRun) -> ScoringRun:
        self.s.add(run)
        self.s.flush()
        return run
