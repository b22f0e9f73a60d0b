"""projects: what datasets, jobs and audits belong to, who may see them, and their quotas

Everything from before projects existed moves to the project "default", and every existing
user becomes its member, so nobody loses sight of anything by upgrading. Built-in datasets
belong to no project: every project may read them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 02:00:00.000000
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# services.core.projects.DEFAULT_PROJECT_ID, repeated: a migration must not change when that
# code does.
DEFAULT_ID = "prj_default"
DEFAULT_NAME = "default"


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True),
        sa.Column("max_trials_per_job", sa.Integer(), nullable=True),
        sa.Column("max_cpus", sa.Float(), nullable=True),
        sa.Column("max_gpus", sa.Float(), nullable=True),
        sa.Column("max_storage_bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("project_id", "user_id"),
    )
    op.create_index("ix_project_members_user_id", "project_members", ["user_id"])

    conn = op.get_bind()
    now = datetime.now(UTC)
    projects = sa.table(
        "projects",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    conn.execute(projects.insert().values(id=DEFAULT_ID, name=DEFAULT_NAME, created_at=now))
    users = sa.table("users", sa.column("id", sa.String))
    members = sa.table(
        "project_members",
        sa.column("project_id", sa.String),
        sa.column("user_id", sa.String),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    for (user_id,) in conn.execute(sa.select(users.c.id)).all():
        conn.execute(members.insert().values(project_id=DEFAULT_ID, user_id=user_id, created_at=now))

    for table, nullable in (("jobs", False), ("audits", False), ("datasets", True)):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("project_id", sa.String(length=40), nullable=True))
        rows = sa.table(table, sa.column("project_id", sa.String))
        update = rows.update().values(project_id=DEFAULT_ID)
        if table == "datasets":
            update = update.where(sa.column("builtin") == sa.false())
        conn.execute(update)
        with op.batch_alter_table(table, schema=None) as batch_op:
            if not nullable:
                batch_op.alter_column(
                    "project_id", existing_type=sa.String(length=40), nullable=False
                )
            batch_op.create_foreign_key(
                f"fk_{table}_project_id_projects", "projects", ["project_id"], ["id"]
            )
            batch_op.create_index(f"ix_{table}_project_id", ["project_id"], unique=False)


def downgrade() -> None:
    for table in ("datasets", "audits", "jobs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_project_id")
            batch_op.drop_constraint(f"fk_{table}_project_id_projects", type_="foreignkey")
            batch_op.drop_column("project_id")
    op.drop_index("ix_project_members_user_id", table_name="project_members")
    op.drop_table("project_members")
    op.drop_table("projects")
