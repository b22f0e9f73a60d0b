"""batch scoring runs

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 10:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scoring_runs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('model_id', sa.String(length=40), nullable=False),
    sa.Column('endpoint', sa.String(length=63), nullable=True),
    sa.Column('dataset_id', sa.String(length=40), nullable=False),
    sa.Column('dataset_sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('request', sa.JSON(), nullable=False),
    sa.Column('rows_total', sa.BigInteger(), nullable=True),
    sa.Column('rows_done', sa.BigInteger(), nullable=False),
    sa.Column('output_uri', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=40), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ),
    sa.ForeignKeyConstraint(['model_id'], ['model_versions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('scoring_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_scoring_runs_dataset_id'), ['dataset_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_scoring_runs_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_scoring_runs_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('scoring_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_scoring_runs_status'))
        batch_op.drop_index(batch_op.f('ix_scoring_runs_model_id'))
        batch_op.drop_index(batch_op.f('ix_scoring_runs_dataset_id'))

    op.drop_table('scoring_runs')
