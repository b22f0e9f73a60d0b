"""The database schema (SQLAlchemy 2.0 declarative models).

Every change to these classes comes with an Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, always timezone-aware in Python.

    PostgreSQL keeps the zone; SQLite drops it and hands back naive values, which could not
    be compared with fresh ones. Stored values are UTC either way.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC time")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    """A person or service account. Its role is what every one of its tokens may do."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # viewer | member | approver | admin (services.core.tokens.ROLES)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # A disabled user's tokens all stop working at once; the row stays for the audit log.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Project(Base):
    """What datasets, jobs, models and endpoints belong to: a token sees only its user's
    projects (admins see all), and each project's quotas bound what it may use at once."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Quotas; NULL is no limit. Jobs count while queued or running.
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    max_trials_per_job: Mapped[int | None] = mapped_column(Integer)
    max_cpus: Mapped[float | None] = mapped_column(Float)
    max_gpus: Mapped[float | None] = mapped_column(Float)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger)


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # sha256 of the secret: the secret itself is shown once, at creation, and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Before migration 0008 a token carried its own role; each now belongs to a user.
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Updated at most once a minute, so reads do not each become a write.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditLogEntry(Base):
    """One state-changing API request, refused ones included. Append-only: the code has no
    UPDATE or DELETE of it, and the database refuses both (triggers from migration 0008)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    # Who, as far as the request proved it: NULL for a request without a valid token. No
    # foreign key: the log outlives what it names.
    actor_id: Mapped[str | None] = mapped_column(String(40), index=True)
    actor_name: Mapped[str | None] = mapped_column(String(100))
    token_id: Mapped[str | None] = mapped_column(String(40))
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    # The route's template (/v1/jobs/{job_id}/cancel); NULL when no route matched.
    route: Mapped[str | None] = mapped_column(String(200))
    resource_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    client_ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` a user sent with POST /v1/jobs, and the job it created."""

    __tablename__ = "idempotency_keys"
    # Unique per user: two racing requests with one key cannot both insert, so the loser's
    # transaction (and the job it was creating) rolls back.
    __table_args__ = (UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 of the canonical JSON of the request body: the same key with another body is
    # refused.
    request_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    uri: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(20))
    sha256: Mapped[str] = mapped_column(String(64))
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    num_rows: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    columns: Mapped[list[Any]] = mapped_column(JSON)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text)
    license: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Registered by URI: the URI as the caller gave it. ``uri`` is what jobs read: the resolved
    # location of a Parquet file (read in place), or the Parquet copy of a CSV.
    source_uri: Mapped[str | None] = mapped_column(Text)
    # jobs.quality.quality_report at registration; None for rows older than migration 0003.
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # NULL for the built-in datasets, which every project may read.
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), index=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    # Models, endpoints and scoring runs belong to their job's project (through the job).
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    created_by: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Ray submissions of this job: a driver that dies unexplained is relaunched and restores
    # the Tune experiment; each launch is its own Ray job ("<id>", "<id>-r1", ...).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resumable: Mapped[bool] = mapped_column(Boolean, default=False)
    best_trial_key: Mapped[str | None] = mapped_column(String(100))
    best_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    audit: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    bundle_uri: Mapped[str | None] = mapped_column(Text)
    bundle_digest: Mapped[str | None] = mapped_column(String(64))


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("job_id", "trial_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    trial_key: Mapped[str] = mapped_column(String(100))
    number: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TrialEpoch(Base):
    __tablename__ = "trial_epochs"

    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (UniqueConstraint("job_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(40))
    ts: Mapped[float] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    # One per job and candidate: the best model, and a fairness-mitigated one when asked for.
    __table_args__ = (
        UniqueConstraint("job_id", "candidate", name="uq_model_versions_job_candidate"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    candidate: Mapped[str] = mapped_column(String(20), default="best", server_default="best")
    trial_key: Mapped[str] = mapped_column(String(100))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    bundle_uri: Mapped[str] = mapped_column(Text)
    bundle_digest: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    audit_passed: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # {"package": version, "git_commit": sha or None} when registered; None before 0004.
    code_version: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Endpoint(Base):
    __tablename__ = "endpoints"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The effective jobs.spec.ServingSpec (JSON); None on rows older than migration 0007,
    # read as the defaults.
    serving: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # A canary: the second version and the percent of requests it gets.
    canary_model_id: Mapped[str | None] = mapped_column(String(40))
    canary_percent: Mapped[int | None] = mapped_column(Integer)
    # The monitoring alert the endpoint is in ("drift"), None when none.
    alert: Mapped[str | None] = mapped_column(String(40))


class Promotion(Base):
    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(63), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    previous_model_id: Mapped[str | None] = mapped_column(String(40))
    actor: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # promote | rollback | auto; None on rows older than migration 0004 (all promotions).
    kind: Mapped[str | None] = mapped_column(String(20))
    # The written reason of an override: the gates failed and a person promoted anyway.
    reason: Mapped[str | None] = mapped_column(Text)
    # Every gate check as judged then, so the history shows what an override overrode.
    checks: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


class Audit(Base):
    """An audit of predictions a user brought (POST /v1/audits); job audits live on the job."""

    __tablename__ = "audits"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    # The dataset's digest when audited, so the document stays tied to the exact rows.
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    passed: Mapped[bool] = mapped_column(Boolean)
    num_rows: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)


class ScoringRun(Base):
    """A batch scoring run: one model version's predictions for every row of a dataset,
    computed by a Ray job (``python -m jobs.score <id>``) and written as Parquet."""

    __tablename__ = "scoring_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    # The endpoint whose live model was scored, when asked through an endpoint; the model id
    # is resolved at request time so a later promotion does not change what this run scored.
    endpoint: Mapped[str | None] = mapped_column(String(63))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    # The dataset's digest when requested: the job refuses rows that changed since.
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), index=True)
    # What the caller asked for: concurrency, batch_size, passthrough columns.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows_total: Mapped[int | None] = mapped_column(BigInteger)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    output_uri: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PredictionLog(Base):
    """One logged prediction of a served endpoint (sampled by the replica), with the label
    a client sent back later as feedback."""

    __tablename__ = "prediction_logs"
    __table_args__ = (
        # A replica that resends a batch must not log a prediction twice.
        UniqueConstraint(
            "endpoint", "request_id", "index", name="uq_prediction_logs_endpoint_request_index"
        ),
        # The monitoring window: the most recent predictions of one endpoint.
        Index("ix_prediction_logs_endpoint_ts", "endpoint", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(63))
    model_id: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(64))
    # The instance's position in its request.
    index: Mapped[int] = mapped_column(Integer)
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # The instance as the client sent it (extra columns such as sensitive features included).
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    prediction: Mapped[Any] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    label: Mapped[Any | None] = mapped_column(JSON)
    labelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EndpointEvent(Base):
    """Something that happened to an endpoint's monitoring, e.g. a drift alert raised."""

    __tablename__ = "endpoint_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(String(63), index=True)
    type: Mapped[str] = mapped_column(String(40))
    ts: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
