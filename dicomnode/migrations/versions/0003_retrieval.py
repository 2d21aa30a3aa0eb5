"""jobs: on-demand and retrieve columns, the model that made the results; outputs.warning

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


def downgrade() -> None:
    with op.batch_alter_table("outputs") as batch:
        batch.drop_column("warning")
    with op.batch_alter_table("jobs") as batch:
        for name, _ in reversed(_JOB_COLUMNS):
            batch.drop_column(name)
