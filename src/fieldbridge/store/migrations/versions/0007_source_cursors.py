"""source cursors: where a pulling source (a Redis stream) goes on after a restart

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

A source that pulls from its transport (the Redis stream source) keeps its own position, in
the transport's terms, written after the entries it covers are committed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_cursors",
        sa.Column("source", sa.Text(), primary_key=True),
        sa.Column("position", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("source_cursors")
