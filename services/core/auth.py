"""Bearer tokens: stored as sha256 hashes, never in the clear.

Two kinds of secret reach the API:
- user tokens (the admin bootstrap token for now), looked up by hash in the ``tokens`` table;
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

from services.config import Settings, read_or_create_secret
from services.core.errors import Unauthorized
from services.core.ids import new_id
from services.store.db import Database
from services.store.models import Token
from services.store.repositories import TokenRepository


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def job_token(secret_key: str, job_id: str) -> str:
    return hmac.new(secret_key.encode(), f"job:{job_id}".encode(), hashlib.sha256).hexdigest()


def endpoint_token(secret_key: str, endpoint: str) -> str:
    """What an endpoint's replicas present when they post their prediction logs."""
    return hmac.new(secret_key.encode(), f"endpoint:{endpoint}".encode(), hashlib.sha256).hexdigest()


def check_endpoint_token(secret_key: str, endpoint: str, presented: str) -> None:
    if not hmac.compare_digest(endpoint_token(secret_key, endpoint), presented):
        raise Unauthorized("invalid endpoint token")


def check_job_token(secret_key: str, job_id: str, presented: str) -> None:
    if not hmac.compare_digest(job_token(secret_key, job_id), presented):
        raise Unauthorized("invalid job token")


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: str


def authenticate(db: Database, authorization: str | None) -> Principal:
    token = bearer(authorization)
    with db.session() as s:
        row = TokenRepository(s).by_hash(hash_token(token))
        if row is None or row.revoked_at is not None:
            raise Unauthorized("invalid or revoked token")
        return Principal(row.id, row.name, row.role)


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
    which is created (mode 0600) on first start.
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
            repo.add(Token(id=new_id("tok"), name="bootstrap", token_hash=digest, role="admin"))
    return token if created else None


def generate_token() -> str:
    return "cru_" + secrets.token_urlsafe(32)
