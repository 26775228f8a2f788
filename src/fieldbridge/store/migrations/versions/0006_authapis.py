"""authenticated APIs: kept OAuth tokens, skipped-message counts, DUNE DB action records

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

oauth_tokens keeps each sink's OAuth token (the rotated refresh token too), so a restart needs
no new grant, and how getting it goes (failures in a row, last error). sink_skips counts the
messages a sink's route or destination skipped, by reason. dunedb_actions records each action
the DUNE DB sink means to create (before the POST) and creates (after it), with the readings it
carries, so a replay or restart never creates a second one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_tokens",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("fingerprint", sa.Text(), nullable=False, server_default=""),
        sa.Column("access_token", sa.Text()),
        sa.Column("refresh_token", sa.Text()),
        sa.Column("token_type", sa.Text(), nullable=False, server_default="Bearer"),
        sa.Column("expires_at", sa.Double()),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.Column("failed_at", sa.Double()),
    )
    op.create_table(
        "sink_skips",
        sa.Column("sink", sa.Text(), primary_key=True),
        sa.Column("reason", sa.Text(), primary_key=True),
        sa.Column("count", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_message_id", sa.BigInteger()),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )
    op.create_table(
        "dunedb_actions",
        sa.Column("sink", sa.Text(), primary_key=True),
        sa.Column("message_id", sa.BigInteger(), primary_key=True),
        sa.Column("state", sa.Text(), nullable=False, server_default="intended"),
        sa.Column("component_uuid", sa.Text(), nullable=False),
        sa.Column("form_id", sa.Text(), nullable=False),
        sa.Column("readings", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("action_id", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("intended_at", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double()),
    )


def downgrade() -> None:
    op.drop_table("dunedb_actions")
    op.drop_table("sink_skips")
    op.drop_table("oauth_tokens")
