"""datasets registered by URI, and their data quality report

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 09:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('datasets', sa.Column('source_uri', sa.Text(), nullable=True))
    op.add_column('datasets', sa.Column('quality', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('datasets', 'quality')
    op.drop_column('datasets', 'source_uri')
