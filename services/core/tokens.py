"""Users and their API tokens: create, list, revoke, disable; and keeping serving in step.

A token's secret is shown once, when it is created; only its sha256 is stored. A token is
refused (401) once revoked, once past ``expires_at``, or once its user is disabled.

Serving replicas check the caller's token against a set of hashes pushed to them in the
Serve config (services/serving/app.py), not against the database, so creating or revoking a
token, disabling or enabling a user, making one an admin or no longer one, and adding or
removing a project's member push that config again: ``sync_serving_tokens``. Each endpoint
takes its project's members' tokens and every admin's (``rollout.access``). A
token that simply expires is dropped by ``ExpirySync``, which wakes at the next expiry and
pushes again.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from services.core import rollout
from services.core.auth import ROLES, Principal, generate_token, hash_token
from services.core.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from services.core.ids import new_id
from services.orchestrator.serve_deployer import ServeDeployer
from services.store.db import Database
from services.store.models import Token, User, utcnow
from services.store.projects import ProjectRepository
from services.store.repositories import TokenRepository, UserRepository

log = logging.getLogger(__name__)

# Users' names: letters, digits and . _ @ - (an e-mail address fits).
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"
MAX_TOKEN_DAYS = 3650


def user_view(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "name": u.name,
        "role": u.role,
        "created_at": u.created_at.isoformat(),
        "disabled_at": u.disabled_at.isoformat() if u.disabled_at else None,
    }


def token_view(t: Token, now: datetime | None = None) -> dict[str, Any]:
    """A token as listed: never its secret, nor its hash."""
    now = now or utcnow()
    if t.revoked_at is not None:
        state = "revoked"
    elif t.expires_at is not None and t.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return {
        "id": t.id,
        "name": t.name,
        "user_id": t.user_id,
        "status": state,
        "created_at": t.created_at.isoformat(),
        "expires_at": t.expires_at.isoformat() if t.expires_at else None,
        "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
        "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
    }


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise Invalid(
            f"unknown role '{role}'",
            [{"loc": ["role"], "msg": f"one of {', '.join(ROLES)}"}],
        )


def create_user(
    db: Database, name: str, role: str, projects: list[str] | None = None
) -> dict[str, Any]:
    """A user, member of the projects named (by default the project "default")."""
    _check_role(role)
    names = list(dict.fromkeys(projects if projects is not None else ["default"]))
    with db.session() as s:
        users = UserRepository(s)
        if users.by_name(name) is not None:
            raise Conflict(f"a user named '{name}' exists", [{"loc": ["name"], "msg": "taken"}])
        repo = ProjectRepository(s)
        found = [repo.by_name(n) for n in names]
        missing = [i for i, p in enumerate(found) if p is None]
        if missing:
            raise Invalid(
                f"no project '{names[missing[0]]}'",
                [{"loc": ["projects", i], "msg": f"no project '{names[i]}'"} for i in missing],
            )
        user = users.add(User(id=new_id("usr"), name=name, role=role))
        for project in found:
            assert project is not None
            repo.add_member(project.id, user.id)
        return {**user_view(user), "projects": names}


def list_users(db: Database) -> list[dict[str, Any]]:
    with db.session() as s:
        return [user_view(u) for u in UserRepository(s).list()]


def update_user(
    db: Database, user_id: str, role: str | None, disabled: bool | None
) -> tuple[dict[str, Any], bool]:
    """Change a user's role or disable/enable them; True with the view when that changed
    which tokens serving takes (so its config must be pushed again). The last enabled admin
    can be neither demoted nor disabled: nobody could manage users after that."""
    if role is not None:
        _check_role(role)
    with db.session() as s:
        users = UserRepository(s)
        user = users.get(user_id)
        if user is None:
            raise NotFound(f"no user '{user_id}'")
        loses_admin = (
            user.role == "admin"
            and user.disabled_at is None
            and ((role is not None and role != "admin") or disabled is True)
        )
        if loses_admin and users.count_enabled("admin") <= 1:
            raise Conflict(f"'{user.name}' is the last enabled admin")
        changed = False
        if role is not None:
            # An admin's tokens are taken by every endpoint, anyone else's by their projects'.
            changed = (role == "admin") != (user.role == "admin")
            user.role = role
        if disabled is True and user.disabled_at is None:
            user.disabled_at, changed = utcnow(), True
        elif disabled is False and user.disabled_at is not None:
            user.disabled_at, changed = None, True
        s.flush()
        return user_view(user), changed


def create_token(
    db: Database,
    caller: Principal,
    name: str,
    user_id: str | None,
    expires_in_days: int | None,
) -> dict[str, Any]:
    """A new token for the caller, or (admins only) for another user: its view plus
    ``token``, the secret, which is never shown again."""
    owner_id = user_id or caller.user_id
    if owner_id != caller.user_id and not caller.has("admin"):
        raise Forbidden("needs role admin to create a token for another user")
    secret = generate_token()
    with db.session() as s:
        owner = UserRepository(s).get(owner_id)
        if owner is None:
            raise NotFound(f"no user '{owner_id}'", [{"loc": ["user_id"], "msg": "not found"}])
        if owner.disabled_at is not None:
            raise Conflict(f"user '{owner.name}' is disabled")
        expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        token = TokenRepository(s).add(
            Token(
                id=new_id("tok"),
                name=name,
                token_hash=hash_token(secret),
                user_id=owner.id,
                expires_at=expires,
            )
        )
        return {**token_view(token), "token": secret}


def list_tokens(db: Database, caller: Principal, user_id: str | None) -> list[dict[str, Any]]:
    """The caller's own tokens; an admin sees everyone's (or one user's with ``user_id``)."""
    if not caller.has("admin"):
        if user_id is not None and user_id != caller.user_id:
            raise Forbidden("needs role admin to list another user's tokens")
        user_id = caller.user_id
    now = utcnow()
    with db.session() as s:
        return [token_view(t, now) for t in TokenRepository(s).list_for(user_id)]


def revoke_token(db: Database, caller: Principal, token_id: str) -> tuple[dict[str, Any], bool]:
    """Revoke one of the caller's tokens (an admin: anyone's). Another user's token answers
    404 to a non-admin, as if it did not exist. True with the view when this call revoked it
    (a second revocation changes nothing)."""
    with db.session() as s:
        token = TokenRepository(s).get(token_id)
        if token is None or (token.user_id != caller.user_id and not caller.has("admin")):
            raise NotFound(f"no token '{token_id}'")
        changed = token.revoked_at is None
        if changed:
            token.revoked_at = utcnow()
            s.flush()
        return token_view(token), changed


def sync_serving_tokens(db: Database, deployer: ServeDeployer) -> bool:
    """Push the Serve config again with the token hashes active now, so replicas stop taking
    a revoked or expired token (or a disabled user's). False when there is nothing to push
    (no endpoint) or Ray did not take it (logged; ``ExpirySync`` tries again later)."""
    with deployer.lock:
        live, who = rollout.states(db)
        if not live:
            return False
        try:
            deployer.apply(live, who)
        except DomainError as exc:
            log.warning("could not push the serving tokens: %s", exc.detail)
            return False
    return True


class ExpirySync:
    """A thread that pushes the serving tokens again when a token expires, and (after
    ``changed``) soon after a revocation whose own push failed."""

    def __init__(self, db: Database, deployer: ServeDeployer, max_sleep_s: float = 300.0):
        self.db = db
        self.deployer = deployer
        self.max_sleep_s = max_sleep_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # The first pass pushes the lists the database gives now: Ray keeps the Serve config
        # across API restarts, so what an older API pushed (before an upgrade changed who may
        # call an endpoint, or before a token expired while the API was down) is replaced.
        self._pending = True
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="token-expiry-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def changed(self) -> None:
        """A push failed or is owed: try again soon."""
        self._pending = True
        self._wake.set()

    def _run(self) -> None:
        last = utcnow()
        while not self._stop.is_set():
            try:
                with self.db.session() as s:
                    upcoming = TokenRepository(s).next_expiry(last)
            except Exception:  # the database may be down for a while; keep the thread
                log.exception("token expiry check failed")
                upcoming = None
            sleep = self.max_sleep_s
            if upcoming is not None:
                sleep = min(sleep, max(0.0, (upcoming - utcnow()).total_seconds()) + 0.5)
            if self._pending:
                sleep = min(sleep, 5.0)
            self._wake.wait(sleep)
            self._wake.clear()
            if self._stop.is_set():
                return
            now = utcnow()
            due = upcoming is not None and upcoming <= now
            if due or self._pending:
                try:
                    pushed = sync_serving_tokens(self.db, self.deployer)
                    self._pending = False if pushed else self._pending and self._has_live()
                except Exception:
                    log.exception("serving token sync failed")
                last = now if due else last

    def _has_live(self) -> bool:
        live, _ = rollout.states(self.db)
        return bool(live)
