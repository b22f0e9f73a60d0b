"""promotion gates, overrides and rollbacks; code version on model versions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('model_versions', sa.Column('code_version', sa.JSON(), nullable=True))
    op.add_column('promotions', sa.Column('kind', sa.String(length=20), nullable=True))
    op.add_column('promotions', sa.Column('reason', sa.Text(), nullable=True))
    op.add_column('promotions', sa.Column('checks', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('promotions', schema=None) as batch_op:
        batch_op.drop_column('checks')
        batch_op.drop_column('reason')
        batch_op.drop_column('kind')
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('code_version')
