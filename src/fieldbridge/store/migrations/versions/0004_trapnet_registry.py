"""trap-network registry: device role and liveness columns, message types, node-gateway links

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

devices gets role (node/repeater/gateway), status (current/down/maintenance) with
status_since, allowed_downtime_min (default 60), message_type and team. message_types and
message_type_fields name the values of CSV lines; node_gateways records which gateway or
repeater relayed which device, and when it last did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def device_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("role", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="current"),
        sa.Column("status_since", sa.Double(), nullable=True),
        sa.Column("allowed_downtime_min", sa.Integer(), nullable=False, server_default="60"),
        sa.Column("message_type", sa.Text(), nullable=True),
        sa.Column("team", sa.Text(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch_op:
        for column in device_columns():
            batch_op.add_column(column)
    op.create_table(
        "message_types",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )
    op.create_table(
        "message_type_fields",
        sa.Column(
            "message_type",
            sa.Text(),
            sa.ForeignKey("message_types.name", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("type", sa.Text(), nullable=False, server_default="F"),
        sa.Column("is_tag", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "node_gateways",
        sa.Column("node", sa.Text(), primary_key=True),
        sa.Column("via", sa.Text(), primary_key=True),
        sa.Column("role", sa.Text(), nullable=False, server_default="gateway"),
        sa.Column("last_seen", sa.Double(), nullable=False),
    )
    op.create_index("ix_node_gateways_via", "node_gateways", ["via"])


def downgrade() -> None:
    op.drop_index("ix_node_gateways_via", table_name="node_gateways")
    op.drop_table("node_gateways")
    op.drop_table("message_type_fields")
    op.drop_table("message_types")
    with op.batch_alter_table("devices") as batch_op:
        for column in reversed(device_columns()):
            batch_op.drop_column(column.name)
