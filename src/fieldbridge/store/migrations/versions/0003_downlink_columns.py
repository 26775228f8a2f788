"""downlink columns: the retry state of a downlink as typed columns instead of meta keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

The keys origin, fields, expect_hash_change, attempts, sent_hash, failed and failed_at of
downlinks.meta move into columns of their own (failed becomes failed_reason); other meta keys
stay. failed is kept as text; a key whose JSON value has another type than fieldbridge writes
is dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KEYS = ("origin", "fields", "expect_hash_change", "attempts", "sent_hash", "failed", "failed_at")

SQLITE_UP = """
UPDATE downlinks SET
  origin = CASE json_type(meta, '$.origin') WHEN 'text' THEN json_extract(meta, '$.origin') END,
  fields = CASE json_type(meta, '$.fields') WHEN 'object' THEN json_extract(meta, '$.fields') END,
  expect_hash_change = CASE json_type(meta, '$.expect_hash_change')
    WHEN 'true' THEN 1 WHEN 'false' THEN 0 END,
  attempts = CASE WHEN json_type(meta, '$.attempts') IN ('integer', 'real')
    THEN CAST(json_extract(meta, '$.attempts') AS INTEGER) ELSE 0 END,
  sent_hash = CASE json_type(meta, '$.sent_hash')
    WHEN 'integer' THEN json_extract(meta, '$.sent_hash') END,
  failed_reason = CASE WHEN json_type(meta, '$.failed') != 'null'
    THEN CAST(json_extract(meta, '$.failed') AS TEXT) END,
  failed_at = CASE WHEN json_type(meta, '$.failed_at') IN ('integer', 'real')
    THEN json_extract(meta, '$.failed_at') END,
  meta = json_remove(meta, {paths})
WHERE json_valid(meta)
""".format(paths=", ".join(f"'$.{k}'" for k in KEYS))

POSTGRESQL_UP = """
UPDATE downlinks SET
  origin = CASE jsonb_typeof(m -> 'origin') WHEN 'string' THEN m ->> 'origin' END,
  fields = CASE jsonb_typeof(m -> 'fields') WHEN 'object' THEN (m -> 'fields')::text END,
  expect_hash_change = CASE jsonb_typeof(m -> 'expect_hash_change')
    WHEN 'boolean' THEN (m ->> 'expect_hash_change')::boolean END,
  attempts = CASE jsonb_typeof(m -> 'attempts')
    WHEN 'number' THEN (m ->> 'attempts')::numeric::integer ELSE 0 END,
  sent_hash = CASE jsonb_typeof(m -> 'sent_hash')
    WHEN 'number' THEN (m ->> 'sent_hash')::numeric::bigint END,
  failed_reason = CASE WHEN jsonb_typeof(m -> 'failed') IN ('string', 'null') THEN m ->> 'failed'
    ELSE (m -> 'failed')::text END,
  failed_at = CASE jsonb_typeof(m -> 'failed_at')
    WHEN 'number' THEN (m ->> 'failed_at')::double precision END,
  meta = (m - ARRAY[{keys}])::text
FROM (SELECT id AS src_id, meta::jsonb AS m FROM downlinks) AS src
WHERE downlinks.id = src.src_id
""".format(keys=", ".join(f"'{k}'" for k in KEYS))

# Downgrade: (column, SQLite JSON value, PostgreSQL jsonb value) put back under the old key.
BACK = (
    ("origin", "origin", "to_jsonb(origin)"),
    ("fields", "json(fields)", "fields::jsonb"),
    (
        "expect_hash_change",
        "json(CASE WHEN expect_hash_change THEN 'true' ELSE 'false' END)",
        "to_jsonb(expect_hash_change)",
    ),
    ("attempts", "attempts", "to_jsonb(attempts)"),
    ("sent_hash", "sent_hash", "to_jsonb(sent_hash)"),
    ("failed_reason", "failed_reason", "to_jsonb(failed_reason)"),
    ("failed_at", "failed_at", "to_jsonb(failed_at)"),
)
OLD_KEY = {"failed_reason": "failed"}


def columns() -> list[sa.Column[object]]:
    return [
        sa.Column("origin", sa.Text(), nullable=True),
        sa.Column("fields", sa.Text(), nullable=True),
        sa.Column("expect_hash_change", sa.Boolean(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sent_hash", sa.BigInteger(), nullable=True),
        sa.Column("failed_reason", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.Double(), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("downlinks") as batch_op:
        for column in columns():
            batch_op.add_column(column)
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.execute(SQLITE_UP if sqlite else POSTGRESQL_UP)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for column, sqlite_value, pg_value in BACK:
        key = OLD_KEY.get(column, column)
        skip = "attempts = 0" if column == "attempts" else f"{column} IS NULL"
        if sqlite:
            op.execute(
                f"UPDATE downlinks SET meta = json_set(meta, '$.{key}', {sqlite_value}) "
                f"WHERE NOT ({skip}) AND json_valid(meta)"
            )
        else:
            op.execute(
                f"UPDATE downlinks SET meta = (meta::jsonb || "
                f"jsonb_build_object('{key}', {pg_value}))::text WHERE NOT ({skip})"
            )
    with op.batch_alter_table("downlinks") as batch_op:
        for dropped in reversed(columns()):
            batch_op.drop_column(dropped.name)
