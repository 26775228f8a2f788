"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dead_letters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('sink', sa.Text(), nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='1', nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('body', sa.Text(), server_default='', nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.Column('state', sa.Text(), server_default='dead', nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sink', 'message_id', name='uq_dead_letters_sink_message')
    )
    op.create_table('devices',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=True),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.Double(), nullable=False),
    sa.Column('last_seen', sa.Double(), nullable=False),
    sa.Column('message_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('attributes', sa.Text(), server_default='{}', nullable=False),
    sa.Column('flags', sa.Text(), server_default='{}', nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('downlinks',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('state', sa.Text(), server_default='queued', nullable=False),
    sa.Column('meta', sa.Text(), server_default='{}', nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('sent_at', sa.Double(), nullable=True),
    sa.Column('confirmed_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('downlinks', schema=None) as batch_op:
        batch_op.create_index('ix_downlinks_device_state', ['device', 'state'], unique=False)

    op.create_table('journal',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.Double(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=True),
    sa.Column('meta', sa.Text(), server_default='{}', nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('idem_key', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idem_key', 'source', name='uq_journal_idem_key_source'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('journal', schema=None) as batch_op:
        batch_op.create_index('ix_journal_received_at', ['received_at'], unique=False)

    op.create_table('quarantine',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.Double(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('meta', sa.Text(), server_default='{}', nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.create_index('ix_quarantine_received_at', ['received_at'], unique=False)

    op.create_table('readings',
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('device', sa.Text(), nullable=False),
    sa.Column('measured_at', sa.Double(), nullable=False),
    sa.Column('quantity', sa.Text(), nullable=False),
    sa.Column('channel', sa.Integer(), server_default='0', nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('unit', sa.Text(), nullable=True),
    sa.Column('extra', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('message_id', 'seq'),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('readings', schema=None) as batch_op:
        batch_op.create_index('ix_readings_device_measured_at', ['device', 'measured_at'], unique=False)

    op.create_table('sink_state',
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('cursor', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('paused', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('state', sa.Text(), server_default='idle', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('replay_from', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.Double(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('sink_state')
    with op.batch_alter_table('readings', schema=None) as batch_op:
        batch_op.drop_index('ix_readings_device_measured_at')

    op.drop_table('readings')
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.drop_index('ix_quarantine_received_at')

    op.drop_table('quarantine')
    with op.batch_alter_table('journal', schema=None) as batch_op:
        batch_op.drop_index('ix_journal_received_at')

    op.drop_table('journal')
    with op.batch_alter_table('downlinks', schema=None) as batch_op:
        batch_op.drop_index('ix_downlinks_device_state')

    op.drop_table('downlinks')
    op.drop_table('devices')
    op.drop_table('dead_letters')
