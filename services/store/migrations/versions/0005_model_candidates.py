"""model versions per job and candidate (best, or fairness-mitigated)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 19:50:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None



def _model_versions(candidate_unique: bool) -> sa.Table:
    """The table as SQLite's batch mode should rebuild it: SQLite cannot drop 0001's unnamed
    one-per-job constraint, so the table is copied into this definition, which has none."""
    return sa.Table(
        'model_versions',
        sa.MetaData(),
        sa.Column('id', sa.String(length=40), primary_key=True),
        sa.Column('job_id', sa.String(length=40), sa.ForeignKey('jobs.id'), nullable=False),
        sa.Column('trial_key', sa.String(length=100), nullable=False),
        sa.Column('dataset_id', sa.String(length=40), sa.ForeignKey('datasets.id'), nullable=False),
        sa.Column('dataset_sha256', sa.String(length=64), nullable=False),
        sa.Column('bundle_uri', sa.Text(), nullable=False),
        sa.Column('bundle_digest', sa.String(length=64), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('audit_passed', sa.Boolean(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('code_version', sa.JSON(), nullable=True),
        *([] if candidate_unique else [sa.UniqueConstraint('job_id')]),
    )


def _one_per_job_name() -> str | None:
    for uq in sa.inspect(op.get_bind()).get_unique_constraints('model_versions'):
        if uq['column_names'] == ['job_id']:
            return uq['name']
    return None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    with op.batch_alter_table(
        'model_versions', copy_from=_model_versions(True) if sqlite else None
    ) as batch_op:
        if not sqlite:
            name = _one_per_job_name()
            if name is not None:
                batch_op.drop_constraint(name, type_='unique')
        batch_op.add_column(
            sa.Column('candidate', sa.String(length=20), server_default='best', nullable=False)
        )
        batch_op.create_unique_constraint(
            'uq_model_versions_job_candidate', ['job_id', 'candidate']
        )


def downgrade() -> None:
    # Versions of other candidates cannot survive one-per-job (nor can their promotions).
    op.execute(
        "DELETE FROM promotions WHERE model_id IN "
        "(SELECT id FROM model_versions WHERE candidate <> 'best')"
    )
    op.execute("DELETE FROM model_versions WHERE candidate <> 'best'")
    with op.batch_alter_table('model_versions') as batch_op:
        batch_op.drop_constraint('uq_model_versions_job_candidate', type_='unique')
        batch_op.drop_column('candidate')
        batch_op.create_unique_constraint('model_versions_job_id_key', ['job_id'])
