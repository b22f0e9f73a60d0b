"""Every query the control plane makes, grouped by table. Services call these, never ``select``.

Repositories only ``flush``; the caller's unit of work commits (``Database.session``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from services.store.models import (
    Audit,
    AuditLogEntry,
    Dataset,
    Endpoint,
    EndpointEvent,
    IdempotencyKey,
    Job,
    JobEvent,
    ModelVersion,
    PredictionLog,
    ProjectMember,
    Promotion,
    Token,
    Trial,
    TrialEpoch,
    User,
)

ACTIVE_STATUSES = ("queued", "running")

Scope = Collection[str] | None
"""The projects a query may see: their ids, or None for every project (an admin)."""


class UserRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, user_id: str) -> User | None:
        return self.s.get(User, user_id)

    def by_name(self, name: str) -> User | None:
        return self.s.scalars(select(User).where(User.name == name)).first()

    def list(self) -> Sequence[User]:
        return self.s.scalars(select(User).order_by(User.created_at, User.id)).all()

    def count_enabled(self, role: str) -> int:
        q = select(func.count()).select_from(User)
        q = q.where(User.role == role, User.disabled_at.is_(None))
        return self.s.scalar(q) or 0

    def add(self, user: User) -> User:
        self.s.add(user)
        self.s.flush()
        return user


class TokenRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, token_id: str) -> Token | None:
        return self.s.get(Token, token_id)

    def by_hash(self, token_hash: str) -> Token | None:
        return self.s.scalars(select(Token).where(Token.token_hash == token_hash)).first()

    def with_user(self, token_hash: str) -> tuple[Token, User] | None:
        q = select(Token, User).join(User, Token.user_id == User.id)
        row = self.s.execute(q.where(Token.token_hash == token_hash)).first()
        return (row[0], row[1]) if row is not None else None

    def list_for(self, user_id: str | None) -> Sequence[Token]:
        q = select(Token).order_by(Token.created_at, Token.id)
        if user_id is not None:
            q = q.where(Token.user_id == user_id)
        return self.s.scalars(q).all()

    def add(self, token: Token) -> Token:
        self.s.add(token)
        self.s.flush()
        return token

    def touch(self, token_id: str, at: datetime, older_than: datetime) -> None:
        """Record a use, unless one was recorded after ``older_than`` (a write at most once
        a period per token, whatever the request rate)."""
        self.s.execute(
            update(Token)
            .where(
                Token.id == token_id,
                or_(Token.last_used_at.is_(None), Token.last_used_at < older_than),
            )
            .values(last_used_at=at)
        )

    def active_holders(self, now: datetime | None = None) -> list[tuple[str, str, str | None]]:
        """(hash, role, project id) of each token that may call serving endpoints now (not
        revoked, not expired, its user not disabled), once per project of its user; project
        None for a user in no project."""
        now = now or datetime.now(UTC)
        q = (
            select(Token.token_hash, User.role, ProjectMember.project_id)
            .join(User, Token.user_id == User.id)
            .outerjoin(ProjectMember, ProjectMember.user_id == User.id)
            .where(
                Token.revoked_at.is_(None),
                or_(Token.expires_at.is_(None), Token.expires_at > now),
                User.disabled_at.is_(None),
            )
        )
        return [(h, role, project) for h, role, project in self.s.execute(q)]

    def next_expiry(self, after: datetime) -> datetime | None:
        """The soonest expiry after ``after`` of a token that is otherwise active."""
        q = select(func.min(Token.expires_at)).where(
            Token.revoked_at.is_(None), Token.expires_at > after
        )
        return self.s.scalar(q)


class AuditLogRepository:
    """Append and read; there is deliberately no update or delete."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def append(self, entry: AuditLogEntry) -> None:
        self.s.add(entry)
        self.s.flush()

    def list(
        self, actor: str | None, since: datetime | None, before_id: int | None, limit: int
    ) -> Sequence[AuditLogEntry]:
        q = select(AuditLogEntry).order_by(AuditLogEntry.id.desc()).limit(limit)
        if actor is not None:
            q = q.where(or_(AuditLogEntry.actor_id == actor, AuditLogEntry.actor_name == actor))
        if since is not None:
            q = q.where(AuditLogEntry.ts >= since)
        if before_id is not None:
            q = q.where(AuditLogEntry.id < before_id)
        return self.s.scalars(q).all()


class IdempotencyRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, user_id: str, key: str) -> IdempotencyKey | None:
        q = select(IdempotencyKey).where(
            IdempotencyKey.user_id == user_id, IdempotencyKey.key == key
        )
        return self.s.scalars(q).first()

    def forget_before(self, user_id: str, cutoff: datetime) -> int:
        """Delete the user's keys made before ``cutoff``; how many. Per user, so the unique
        (user, key) index finds them and users' submissions do not wait on each other."""
        q = delete(IdempotencyKey).where(
            IdempotencyKey.user_id == user_id, IdempotencyKey.created_at < cutoff
        )
        return int(getattr(self.s.execute(q), "rowcount", 0))

    def add(self, row: IdempotencyKey) -> None:
        """Flushes at once: a second request with the same key fails here (IntegrityError),
        after waiting for the first one's transaction, and rolls back its own job."""
        self.s.add(row)
        self.s.flush()


class DatasetRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, dataset_id: str) -> Dataset | None:
        return self.s.get(Dataset, dataset_id)

    def list(self, limit: int, offset: int, projects: Scope = None) -> Sequence[Dataset]:
        q = select(Dataset).order_by(Dataset.builtin.desc(), Dataset.created_at.desc())
        q = q.where(_dataset_scope(projects))
        return self.s.scalars(q.limit(limit).offset(offset)).all()

    def count(self, projects: Scope = None) -> int:
        q = select(func.count()).select_from(Dataset).where(_dataset_scope(projects))
        return self.s.scalar(q) or 0

    def add(self, dataset: Dataset) -> Dataset:
        self.s.add(dataset)
        self.s.flush()
        return dataset


def _dataset_scope(projects: Scope) -> Any:
    """Built-in datasets (no project) are everyone's."""
    if projects is None:
        return true()
    return or_(Dataset.project_id.is_(None), Dataset.project_id.in_(projects))


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, job_id: str, for_update: bool = False) -> Job | None:
        if for_update:
            q = select(Job).where(Job.id == job_id).with_for_update()
            return self.s.scalars(q).first()
        return self.s.get(Job, job_id)

    def list(
        self, status: str | None, limit: int, offset: int, projects: Scope = None
    ) -> Sequence[Job]:
        q = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
        if status:
            q = q.where(Job.status == status)
        if projects is not None:
            q = q.where(Job.project_id.in_(projects))
        return self.s.scalars(q.limit(limit).offset(offset)).all()

    def count(self, status: str | None, projects: Scope = None) -> int:
        q = select(func.count()).select_from(Job)
        if status:
            q = q.where(Job.status == status)
        if projects is not None:
            q = q.where(Job.project_id.in_(projects))
        return self.s.scalar(q) or 0

    def active(self, project_id: str | None = None) -> Sequence[Job]:
        q = select(Job).where(Job.status.in_(ACTIVE_STATUSES))
        if project_id is not None:
            q = q.where(Job.project_id == project_id)
        return self.s.scalars(q.order_by(Job.created_at)).all()

    def count_by_status(self) -> dict[str, int]:
        rows = self.s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {status: n for status, n in rows}

    def add(self, job: Job) -> Job:
        self.s.add(job)
        self.s.flush()
        return job


class TrialRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def by_key(self, job_id: str, trial_key: str) -> Trial | None:
        q = select(Trial).where(Trial.job_id == job_id, Trial.trial_key == trial_key)
        return self.s.scalars(q).first()

    def add(self, trial: Trial) -> Trial:
        self.s.add(trial)
        self.s.flush()
        return trial

    def for_job(self, job_id: str) -> Sequence[Trial]:
        q = select(Trial).where(Trial.job_id == job_id).order_by(Trial.number, Trial.id)
        return self.s.scalars(q).all()

    def epochs(self, trial_ids: list[int]) -> Sequence[TrialEpoch]:
        if not trial_ids:
            return []
        q = (
            select(TrialEpoch)
            .where(TrialEpoch.trial_id.in_(trial_ids))
            .order_by(TrialEpoch.trial_id, TrialEpoch.epoch)
        )
        return self.s.scalars(q).all()

    def add_epoch(self, epoch: TrialEpoch) -> bool:
        """Insert an epoch's metrics; False when that epoch was stored already."""
        if self.s.get(TrialEpoch, (epoch.trial_id, epoch.epoch)) is not None:
            return False
        self.s.add(epoch)
        self.s.flush()
        return True

    def count_by_status(self) -> dict[str, int]:
        rows = self.s.execute(select(Trial.status, func.count()).group_by(Trial.status)).all()
        return {status: n for status, n in rows}

    def running_for_job(self, job_id: str) -> Sequence[Trial]:
        q = select(Trial).where(Trial.job_id == job_id, Trial.status == "running")
        return self.s.scalars(q).all()


class EventRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def add_if_new(self, event: JobEvent) -> bool:
        """Store an event unless its key was seen for this job; True when it is new.

        One INSERT ... ON CONFLICT DO NOTHING, inside the caller's transaction: the event is
        committed with what it changes or not at all. (A SAVEPOINT here was a bug on SQLite,
        where a savepoint opened outside a transaction is the transaction: releasing it
        committed the event alone, and an API killed before the rest lost that epoch.)"""
        values = {
            "job_id": event.job_id,
            "key": event.key,
            "type": event.type,
            "ts": event.ts,
            "data": event.data,
        }
        insert = pg_insert if self.s.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = (
            insert(JobEvent)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["job_id", "key"])
            .returning(JobEvent.id)
        )
        return self.s.execute(stmt).first() is not None

    def for_job(self, job_id: str, after_id: int = 0) -> Sequence[JobEvent]:
        q = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        return self.s.scalars(q.order_by(JobEvent.id)).all()


class ModelRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, model_id: str) -> ModelVersion | None:
        return self.s.get(ModelVersion, model_id)

    def for_job(self, job_id: str, candidate: str = "best") -> ModelVersion | None:
        q = select(ModelVersion).where(
            ModelVersion.job_id == job_id, ModelVersion.candidate == candidate
        )
        return self.s.scalars(q).first()

    def list(self, limit: int, offset: int, projects: Scope = None) -> Sequence[ModelVersion]:
        q = select(ModelVersion).order_by(ModelVersion.created_at.desc())
        if projects is not None:
            q = q.join(Job, Job.id == ModelVersion.job_id).where(Job.project_id.in_(projects))
        return self.s.scalars(q.limit(limit).offset(offset)).all()

    def add(self, model: ModelVersion) -> ModelVersion:
        self.s.add(model)
        self.s.flush()
        return model


class EndpointRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, name: str) -> Endpoint | None:
        return self.s.get(Endpoint, name)

    def list(self, projects: Scope = None) -> Sequence[Endpoint]:
        q = select(Endpoint).order_by(Endpoint.name)
        if projects is not None:
            q = (
                q.join(ModelVersion, ModelVersion.id == Endpoint.model_id)
                .join(Job, Job.id == ModelVersion.job_id)
                .where(Job.project_id.in_(projects))
            )
        return self.s.scalars(q).all()

    def add(self, endpoint: Endpoint) -> Endpoint:
        self.s.add(endpoint)
        self.s.flush()
        return endpoint

    def add_promotion(self, promotion: Promotion) -> Promotion:
        self.s.add(promotion)
        self.s.flush()
        return promotion

    def promotions(self, name: str) -> Sequence[Promotion]:
        q = select(Promotion).where(Promotion.endpoint == name).order_by(Promotion.id.desc())
        return self.s.scalars(q).all()

    def promotions_of_model(self, model_id: str) -> Sequence[Promotion]:
        q = select(Promotion).where(Promotion.model_id == model_id).order_by(Promotion.id)
        return self.s.scalars(q).all()


class AuditRepository:
    def __init__(self, session: Session) -> None:
        self.s = session

    def get(self, audit_id: str) -> Audit | None:
        return self.s.get(Audit, audit_id)

    def list(self, limit: int, offset: int, projects: Scope = None) -> Sequence[Audit]:
        q = select(Audit).order_by(Audit.created_at.desc(), Audit.id.desc())
        if projects is not None:
            q = q.where(Audit.project_id.in_(projects))
        return self.s.scalars(q.limit(limit).offset(offset)).all()

    def count(self, projects: Scope = None) -> int:
        q = select(func.count()).select_from(Audit)
        if projects is not None:
            q = q.where(Audit.project_id.in_(projects))
        return self.s.scalar(q) or 0

    def add(self, audit: Audit) -> Audit:
        self.s.add(audit)
        self.s.flush()
        return audit


class MonitoringRepository:
    """Prediction logs, their feedback labels, and endpoint events (serving monitoring)."""

    # Rows per INSERT or IN (...): under SQLite's limit of bound parameters per statement.
    CHUNK = 500

    def __init__(self, session: Session) -> None:
        self.s = session

    def add_predictions(self, rows: list[dict[str, Any]]) -> int:
        """Insert the rows that are new by (endpoint, request_id, index); return how many were.
        ON CONFLICT DO NOTHING keeps a resent batch idempotent even when two copies race."""
        if not rows:
            return 0
        dialect = self.s.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # Core, executemany: compiled once, sent in batches of VALUES (SQLAlchemy's
        # "insertmanyvalues"); RETURNING yields a row per inserted record only.
        stmt = (
            insert(PredictionLog)
            .on_conflict_do_nothing(index_elements=["endpoint", "request_id", "index"])
            .returning(PredictionLog.id)
        )
        return len(self.s.connection().execute(stmt, rows).all())

    def prediction_ids(self, endpoint: str, request_ids: list[str]) -> dict[tuple[str, int], int]:
        """(request_id, index) → row id of the logged predictions of these requests."""
        found: dict[tuple[str, int], int] = {}
        unique = sorted(set(request_ids))
        for start in range(0, len(unique), self.CHUNK):
            q = select(PredictionLog.id, PredictionLog.request_id, PredictionLog.index).where(
                PredictionLog.endpoint == endpoint,
                PredictionLog.request_id.in_(unique[start : start + self.CHUNK]),
            )
            for row_id, request_id, index in self.s.execute(q):
                found[(request_id, index)] = row_id
        return found

    def set_labels(self, labels: dict[int, Any], at: datetime) -> None:
        """Label the rows by id (an ORM bulk UPDATE by primary key)."""
        if labels:
            self.s.execute(
                update(PredictionLog),
                [{"id": i, "label": label, "labelled_at": at} for i, label in labels.items()],
            )

    def window(
        self, endpoint: str, size: int
    ) -> list[tuple[str, dict[str, Any], Any, float, Any, bool]]:
        """The endpoint's ``size`` most recent logged predictions, newest first, as (model_id,
        features, prediction, latency_ms, label, labelled): plain rows, not ORM objects, which
        cost most of the time of a large window."""
        q = (
            select(
                PredictionLog.model_id,
                PredictionLog.features,
                PredictionLog.prediction,
                PredictionLog.latency_ms,
                PredictionLog.label,
                PredictionLog.labelled_at,
            )
            .where(PredictionLog.endpoint == endpoint)
            .order_by(PredictionLog.ts.desc(), PredictionLog.id.desc())
            .limit(size)
        )
        return [(m, f, p, lat, lab, at is not None) for m, f, p, lat, lab, at in self.s.execute(q)]

    def count_predictions(self, endpoint: str) -> int:
        q = select(func.count()).select_from(PredictionLog)
        return self.s.scalar(q.where(PredictionLog.endpoint == endpoint)) or 0

    def set_alert(self, endpoint: str, old: str | None, new: str | None) -> bool:
        """Compare-and-set the endpoint's alert: True when this call moved it from ``old`` (so
        two API replicas judging at once record one event, not two)."""
        current = Endpoint.alert.is_(None) if old is None else Endpoint.alert == old
        result = self.s.execute(
            update(Endpoint).where(Endpoint.name == endpoint, current).values(alert=new)
        )
        return bool(getattr(result, "rowcount", 0))

    def add_event(self, event: EndpointEvent) -> EndpointEvent:
        self.s.add(event)
        self.s.flush()
        return event

    def events(self, endpoint: str, after_id: int, limit: int) -> Sequence[EndpointEvent]:
        q = (
            select(EndpointEvent)
            .where(EndpointEvent.endpoint == endpoint, EndpointEvent.id > after_id)
            .order_by(EndpointEvent.id)
            .limit(limit)
        )
        return self.s.scalars(q).all()

    def last_event(self, endpoint: str, type_: str) -> EndpointEvent | None:
        q = (
            select(EndpointEvent)
            .where(EndpointEvent.endpoint == endpoint, EndpointEvent.type == type_)
            .order_by(EndpointEvent.id.desc())
            .limit(1)
        )
        return self.s.scalars(q).first()
