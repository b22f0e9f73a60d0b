"""Idempotent job submission: ``Idempotency-Key`` on POST /v1/jobs.

The same key (per user) with the same body gives back the job the first request created;
with another body it is a 422 naming the header. The key's row is inserted in the same
transaction as the job, under a unique (user, key) constraint: of concurrent duplicates one
commits, the others fail on the constraint, roll back their own job, and answer with the
winner's. Nothing is launched before the commit (the reconciler launches committed jobs),
so a lost race never reaches Ray.

A key lasts ``idempotency_key_hours`` (24 by default, as payment APIs keep theirs): long
enough for any client's retries, short enough that the table does not grow forever. An older
key is no key: the request makes a new job, and the user's expired rows are deleted in the
same transaction (so the new row fits the unique constraint).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.core.errors import Invalid
from services.store.db import Database
from services.store.models import IdempotencyKey, Job
from services.store.repositories import IdempotencyRepository

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255


def _invalid(msg: str) -> Invalid:
    return Invalid(f"{HEADER}: {msg}", [{"loc": ["header", HEADER], "msg": msg}])


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise _invalid(f"1 to {MAX_KEY_CHARS} printable ASCII characters")
    return key


def body_digest(body: Any) -> str:
    """sha256 of the body's canonical JSON: key order and spacing do not make it another."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cutoff(hours: float, now: datetime | None = None) -> datetime:
    """Keys made before this have expired."""
    return (now or datetime.now(UTC)) - timedelta(hours=hours)


def earlier_job(
    db: Database, user_id: str, key: str, digest: str, expired_before: datetime
) -> str | None:
    """The job this key created before, or None (never used, or expired); 422 when it came
    with another body."""
    with db.session() as s:
        row = IdempotencyRepository(s).get(user_id, key)
        if row is None or row.created_at < expired_before:
            return None
        if row.request_sha256 != digest:
            raise _invalid(
                f"this key was used with another request body (for job {row.job_id}); "
                "use a new key for a new job"
            )
        return row.job_id


def create_once(
    db: Database,
    user_id: str,
    key: str,
    digest: str,
    create: Callable[[Session], Job],
    expired_before: datetime,
) -> tuple[str, bool]:
    """Create the job with ``create`` and record the key in one transaction: (job id, True);
    or, when a concurrent request with the key won, (its job id, False)."""
    try:
        with db.session() as s:
            job = create(s)
            job_id = job.id
            keys = IdempotencyRepository(s)
            keys.forget_before(user_id, expired_before)
            keys.add(IdempotencyKey(user_id=user_id, key=key, request_sha256=digest, job_id=job_id))
    except IntegrityError:
        winner = earlier_job(db, user_id, key, digest, expired_before)
        if winner is None:  # not the key's constraint: a real error
            raise
        return winner, False
    return job_id, True
