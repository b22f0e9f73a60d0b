"""Migration 0008 (users, tokens owned by users, audit log, idempotency keys) from the
previous schema with tokens in it, on SQLite and PostgreSQL; down and up again.
(The upgrade from an empty database is test_migrations' check against the models.)"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect

from services.core.auth import BOOTSTRAP_USER, authenticate, hash_token
from services.store.db import MIGRATIONS, Database, migrate, migration_connection

NEW_TABLES = {"users", "audit_log", "idempotency_keys"}


def _cfg() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def test_legacy_tokens_end_attached_to_the_bootstrap_admin(database_url: str) -> None:
    cfg = _cfg()
    db = Database(database_url)
    try:
        with migration_connection(db.engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0007")
            for token_id, secret, revoked in (
                ("tok_boot", "boot-secret", "NULL"),
                ("tok_old", "old-secret", "CURRENT_TIMESTAMP"),
            ):
                conn.exec_driver_sql(
                    "INSERT INTO tokens (id, name, token_hash, role, created_at, revoked_at) "
                    f"VALUES ('{token_id}', 'bootstrap', '{hash_token(secret)}', 'admin', "
                    f"CURRENT_TIMESTAMP, {revoked})"
                )
        assert not NEW_TABLES & set(inspect(db.engine).get_table_names())

        migrate(db.engine)
        assert set(inspect(db.engine).get_table_names()) >= NEW_TABLES
        token_columns = {c["name"]: c for c in inspect(db.engine).get_columns("tokens")}
        assert "role" not in token_columns
        assert {"user_id", "expires_at", "last_used_at"} <= set(token_columns)
        assert token_columns["user_id"]["nullable"] is False
        with db.engine.connect() as conn:
            users = conn.exec_driver_sql("SELECT id, name, role, disabled_at FROM users").all()
            owners: dict[str, str] = dict(
                conn.exec_driver_sql("SELECT id, user_id FROM tokens").tuples().all()
            )
        assert [(name, role, off) for _, name, role, off in users] == [
            (BOOTSTRAP_USER, "admin", None)
        ]
        assert users[0][0].startswith("usr_")
        assert owners == {"tok_boot": users[0][0], "tok_old": users[0][0]}
        # The migrated bootstrap token works, as its user, an admin; the revoked one stays so.
        who = authenticate(db, "Bearer boot-secret")
        assert (who.token_id, who.name, who.role, who.user_id) == (
            "tok_boot",
            BOOTSTRAP_USER,
            "admin",
            users[0][0],
        )

        with migration_connection(db.engine) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0007")
        assert not NEW_TABLES & set(inspect(db.engine).get_table_names())
        with db.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id, role FROM tokens ORDER BY id").all()
        assert [tuple(r) for r in rows] == [("tok_boot", "admin"), ("tok_old", "admin")]
        migrate(db.engine)
        assert authenticate(db, "Bearer boot-secret").role == "admin"
    finally:
        db.engine.dispose()
