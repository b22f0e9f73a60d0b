"""identity: users, tokens owned by users (expiry, last use), the append-only audit log,
idempotency keys of job submissions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 09:00:00.000000
"""

import secrets
import time
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The user that tokens from before users existed are moved to: the bootstrap token's owner.
BOOTSTRAP_USER = "bootstrap"

_APPEND_ONLY = "audit_log is append-only"


def _user_id() -> str:
    # services.core.ids.new_id, repeated: a migration must not change when that code does.
    return f"usr_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )

    # Every token gets an owner. Tokens from before carried their own role: each role gets
    # one user (in practice only the bootstrap admin token exists: its user is "bootstrap").
    conn = op.get_bind()
    tokens = sa.table("tokens", sa.column("id", sa.String), sa.column("role", sa.String))
    users = sa.table(
        "users",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("role", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    owner: dict[str, str] = {}
    for token_id, role in conn.execute(sa.select(tokens.c.id, tokens.c.role)).all():
        if role not in owner:
            owner[role] = _user_id()
            name = BOOTSTRAP_USER if role == "admin" else f"legacy-{role}"
            conn.execute(
                users.insert().values(
                    id=owner[role], name=name, role=role, created_at=datetime.now(UTC)
                )
            )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    tokens_uid = sa.table("tokens", sa.column("role", sa.String), sa.column("user_id", sa.String))
    for role, user_id in owner.items():
        conn.execute(tokens_uid.update().where(tokens_uid.c.role == role).values(user_id=user_id))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.alter_column("user_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.create_foreign_key("fk_tokens_user_id_users", "users", ["user_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_tokens_user_id"), ["user_id"], unique=False)
        batch_op.drop_column("role")

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("actor_name", sa.String(length=100), nullable=True),
        sa.Column("token_id", sa.String(length=40), nullable=True),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=True),
        sa.Column("resource_id", sa.String(length=200), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_actor_id"), ["actor_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_ts"), ["ts"], unique=False)
    # Append-only in the database too, not only by the code's restraint: a bug or a stray
    # script cannot rewrite history without first dropping the trigger.
    if conn.dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
            f"BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            "ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        for what in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{what.lower()} BEFORE {what} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_ts"))
        batch_op.drop_index(batch_op.f("ix_audit_log_actor_id"))
    op.drop_table("audit_log")

    # Tokens take their owner's role back (a disabled owner's tokens are revoked).
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=20), nullable=True))
    conn.execute(
        sa.text("UPDATE tokens SET role = (SELECT role FROM users WHERE users.id = tokens.user_id)")
    )
    conn.execute(
        sa.text(
            "UPDATE tokens SET revoked_at = (SELECT disabled_at FROM users "
            "WHERE users.id = tokens.user_id) WHERE revoked_at IS NULL AND user_id IN "
            "(SELECT id FROM users WHERE disabled_at IS NOT NULL)"
        )
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.alter_column("role", existing_type=sa.String(length=20), nullable=False)
        batch_op.drop_index(batch_op.f("ix_tokens_user_id"))
        batch_op.drop_constraint("fk_tokens_user_id_users", type_="foreignkey")
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("user_id")
    op.drop_table("users")
