"""Bearer tokens: stored as sha256 hashes, never in the clear.

Two kinds of secret reach the API:
- user tokens, looked up by hash in the ``tokens`` table; each belongs to a user, whose role
  says what it may do (services/core/tokens.py manages both);
- per-job tokens, an HMAC of the job id under the server's secret key, which let a job's
  driver post events for that job and nothing else (endpoint tokens do the same for an
  endpoint's replicas and their prediction logs). They need no storage, so a retried
  submission and the driver it started always agree on the token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from services.config import Settings, read_or_create_secret
from services.core.errors import Forbidden, Unauthorized
from services.core.ids import new_id
from services.store.db import Database
from services.store.models import Token, User, utcnow
from services.store.projects import ProjectRepository
from services.store.repositories import TokenRepository, UserRepository

# The admin user the bootstrap token belongs to (and, after migration 0008, every token from
# before users existed).
BOOTSTRAP_USER = "bootstrap"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def job_token(secret_key: str, job_id: str) -> str:
    return hmac.new(secret_key.encode(), f"job:{job_id}".encode(), hashlib.sha256).hexdigest()


def endpoint_token(secret_key: str, endpoint: str) -> str:
    """What an endpoint's replicas present when they post their prediction logs."""
    return hmac.new(
        secret_key.encode(), f"endpoint:{endpoint}".encode(), hashlib.sha256
    ).hexdigest()


def check_endpoint_token(secret_key: str, endpoint: str, presented: str) -> None:
    if not hmac.compare_digest(endpoint_token(secret_key, endpoint), presented):
        raise Unauthorized("invalid endpoint token")


def check_job_token(secret_key: str, job_id: str, presented: str) -> None:
    if not hmac.compare_digest(job_token(secret_key, job_id), presented):
        raise Unauthorized("invalid job token")


ROLES = ("viewer", "member", "approver", "admin")
"""Each role may do what the ones before it may."""

# How often a token's last use is written at most: reads must not each become a write.
TOUCH_EVERY = timedelta(seconds=60)


def role_rank(role: str) -> int:
    return ROLES.index(role)


@dataclass(frozen=True)
class Principal:
    token_id: str
    # The user's name: what promotions and the audit log record as the actor.
    name: str
    role: str
    user_id: str
    token_name: str = ""
    # The ids of the projects the user may see and act in; None for an admin: every project.
    projects: frozenset[str] | None = frozenset()

    def has(self, role: str) -> bool:
        return role_rank(self.role) >= role_rank(role)

    def sees(self, project_id: str | None) -> bool:
        """Whether a resource of this project exists for the caller ("" or None: a built-in,
        everyone's)."""
        return not project_id or self.projects is None or project_id in self.projects


def authenticate(db: Database, authorization: str | None) -> Principal:
    token = bearer(authorization)
    now = utcnow()
    with db.session() as s:
        repo = TokenRepository(s)
        found = repo.with_user(hash_token(token))
        if found is None or found[0].revoked_at is not None:
            raise Unauthorized("invalid or revoked token")
        row, user = found
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthorized("the token expired")
        if user.disabled_at is not None:
            raise Unauthorized("the token's user is disabled")
        if row.last_used_at is None or row.last_used_at < now - TOUCH_EVERY:
            repo.touch(row.id, now, now - TOUCH_EVERY)
        projects = None if user.role == "admin" else ProjectRepository(s).ids_of(user.id)
        return Principal(row.id, user.name, user.role, user.id, row.name, projects)


def principal_for(db: Database, authorization: str | None) -> Principal | None:
    """Who a request's token names, without judging it (expired or revoked tokens still
    name their user): for the audit log of requests refused before authentication ran."""
    try:
        token = bearer(authorization)
    except Unauthorized:
        return None
    with db.session() as s:
        found = TokenRepository(s).with_user(hash_token(token))
        if found is None:
            return None
        row, user = found
        return Principal(row.id, user.name, user.role, user.id, row.name)


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer <token> header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def ensure_bootstrap_token(db: Database, settings: Settings) -> str | None:
    """Make sure an admin token exists; return it in the clear only when just generated.

    The token comes from ``CRUCIBLE_BOOTSTRAP_TOKEN`` when set, else from ``<data-dir>/token``,
    which is created (mode 0600) on first start. It belongs to the admin user "bootstrap",
    created with it.
    """
    created = False
    if settings.bootstrap_token is not None:
        token = settings.bootstrap_token.get_secret_value()
    else:
        token, created = read_or_create_secret(settings.data_dir / "token")
    digest = hash_token(token)
    with db.session() as s:
        repo = TokenRepository(s)
        if repo.by_hash(digest) is None:
            users = UserRepository(s)
            user = users.by_name(BOOTSTRAP_USER)
            if user is None:
                user = users.add(User(id=new_id("usr"), name=BOOTSTRAP_USER, role="admin"))
            repo.add(Token(id=new_id("tok"), name="bootstrap", token_hash=digest, user_id=user.id))
    return token if created else None


def generate_token() -> str:
    return "cru_" + secrets.token_urlsafe(32)


def check_metrics_caller(
    db: Database, metrics_token: str | None, authorization: str | None
) -> None:
    """The scraper's own token (``metrics_token``), or an admin's API token: the metrics
    name endpoints, their input features, live accuracy and drift, across projects."""
    token = bearer(authorization)
    if metrics_token and hmac.compare_digest(token.encode(), metrics_token.encode()):
        return
    if not authenticate(db, authorization).has("admin"):
        raise Forbidden("the metrics need the metrics token or an admin's token")
