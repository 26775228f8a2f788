"""journal plain readings: a message's plain readings packed into its journal row

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

journal.plain_readings holds a message's readings as one text when they are all plain numbers
at one instant (fieldbridge.packed), NULL otherwise and for messages stored before this
revision. A sink that writes text renders such a message from its journal row alone; the
readings table stays the record that queries read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: SQLite adds it in place, without copying the table.
    op.add_column("journal", sa.Column("plain_readings", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("journal") as batch_op:
        batch_op.drop_column("plain_readings")
