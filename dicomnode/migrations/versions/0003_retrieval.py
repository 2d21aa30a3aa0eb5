"""jobs: on-demand and retrieve columns, the model of the results; outputs.warning; produced_instances

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_JOB_COLUMNS = (
    ("requested_by", sa.String(64)),
    ("source", sa.String(64)),
    ("retrieved_at", sa.DateTime()),
    ("retrieve_received", sa.Integer()),
    ("retrieve_expected", sa.Integer()),
    ("model", sa.String(128)),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name, type_ in _JOB_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("outputs") as batch:
        batch.add_column(sa.Column("warning", sa.Text(), nullable=True))
    op.create_table(
        "produced_instances",
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("produced_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_produced_instances_job_id_jobs"),
        sa.PrimaryKeyConstraint("sop_instance_uid", name="pk_produced_instances"),
    )
    op.create_index("ix_produced_instances_job_id", "produced_instances", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_produced_instances_job_id", table_name="produced_instances")
    op.drop_table("produced_instances")
    with op.batch_alter_table("outputs") as batch:
        batch.drop_column("warning")
    with op.batch_alter_table("jobs") as batch:
        for name, _ in reversed(_JOB_COLUMNS):
            batch.drop_column(name)
