"""reading keys: a reading's natural identity, unique per device

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("readings") as batch_op:
        batch_op.add_column(sa.Column("reading_key", sa.Text(), nullable=True))
    op.create_index(
        "ux_readings_device_key",
        "readings",
        ["device", "reading_key"],
        unique=True,
        sqlite_where=sa.text("reading_key IS NOT NULL"),
        postgresql_where=sa.text("reading_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_readings_device_key", table_name="readings")
    with op.batch_alter_table("readings") as batch_op:
        batch_op.drop_column("reading_key")
