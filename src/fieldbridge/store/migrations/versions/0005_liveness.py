"""liveness: device status transitions and notification subscribers

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

device_transitions records each change of a device's status (current, down, maintenance)
with its time and when its notifications were published; device_subscribers lists who is
told (email or sms address) when a device goes down or comes back up.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("device", sa.Text(), nullable=False),
        sa.Column("from_status", sa.Text(), nullable=False),
        sa.Column("to_status", sa.Text(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False, server_default=""),
        sa.Column("notified_at", sa.Double(), nullable=True),
    )
    op.create_index("ix_device_transitions_device", "device_transitions", ["device", "at"])
    op.create_index("ix_device_transitions_pending", "device_transitions", ["notified_at"])
    op.create_table(
        "device_subscribers",
        sa.Column("device", sa.Text(), primary_key=True),
        sa.Column("channel", sa.Text(), primary_key=True),  # email or sms
        sa.Column("address", sa.Text(), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("device_subscribers")
    op.drop_index("ix_device_transitions_pending", table_name="device_transitions")
    op.drop_index("ix_device_transitions_device", table_name="device_transitions")
    op.drop_table("device_transitions")
