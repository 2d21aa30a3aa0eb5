"""jobs.rerun; job_revisions (late series and revised results)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rerun", sa.String(16), nullable=True))
    op.create_table(
        "job_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("objects", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_revisions_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_job_revisions"),
        sa.UniqueConstraint("job_id", "number", name="uq_job_revisions_job_number"),
    )
    op.create_index("ix_job_revisions_job_id", "job_revisions", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_revisions_job_id", table_name="job_revisions")
    op.drop_table("job_revisions")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("rerun")
