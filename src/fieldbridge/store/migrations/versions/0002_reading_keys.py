"""reading keys: a reading's natural identity, unique per device and time

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
    # The (device, measured_at) index becomes the unique (device, measured_at, reading_key).
    op.create_index(
        "ux_readings_device_time_key",
        "readings",
        ["device", "measured_at", "reading_key"],
        unique=True,
    )
    op.drop_index("ix_readings_device_measured_at", table_name="readings")


def downgrade() -> None:
    op.create_index("ix_readings_device_measured_at", "readings", ["device", "measured_at"])
    op.drop_index("ux_readings_device_time_key", table_name="readings")
    with op.batch_alter_table("readings") as batch_op:
        batch_op.drop_column("reading_key")
