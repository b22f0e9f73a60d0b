"""serving monitoring: prediction logs, endpoint events; endpoint serving settings, canary
and alert state

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 12:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prediction_logs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(length=63), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.JSON(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("label", sa.JSON(), nullable=True),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "endpoint", "request_id", "index", name="uq_prediction_logs_endpoint_request_index"
        ),
    )
    with op.batch_alter_table("prediction_logs", schema=None) as batch_op:
        batch_op.create_index("ix_prediction_logs_endpoint_ts", ["endpoint", "ts"], unique=False)
        batch_op.create_index(batch_op.f("ix_prediction_logs_ts"), ["ts"], unique=False)

    op.create_table(
        "endpoint_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(length=63), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("endpoint_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_endpoint_events_endpoint"), ["endpoint"], unique=False)

    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("serving", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("canary_model_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("canary_percent", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("alert", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_column("alert")
        batch_op.drop_column("canary_percent")
        batch_op.drop_column("canary_model_id")
        batch_op.drop_column("serving")

    with op.batch_alter_table("endpoint_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_endpoint_events_endpoint"))

    op.drop_table("endpoint_events")
    with op.batch_alter_table("prediction_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_logs_ts"))
        batch_op.drop_index("ix_prediction_logs_endpoint_ts")

    op.drop_table("prediction_logs")
