"""The one schema of the store, as SQLAlchemy metadata that the migrations follow."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only makes a rowid alias (and so AUTOINCREMENT, ids never reused) of INTEGER.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time: sa.Double[float] = sa.Double()  # Unix seconds, UTC

journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_at", Time, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("kind", sa.Text),
    sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("idem_key", sa.Text),
    # Its readings packed when all are plain numbers at one instant (fieldbridge.packed).
    sa.Column("plain_readings", sa.Text),
    # idem_key first: a batch looks up hundreds of keys of one source at once.
    sa.UniqueConstraint("idem_key", "source", name="uq_journal_idem_key_source"),
    sa.Index("ix_journal_received_at", "received_at"),
    sqlite_autoincrement=True,
)

readings = sa.Table(
    "readings",
    metadata,
    # Keyed by (message, position): a sink reads a message's readings with the key alone.
    sa.Column("message_id", sa.BigInteger, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("measured_at", Time, nullable=False),
    sa.Column("quantity", sa.Text, nullable=False),
    sa.Column("channel", sa.Integer, nullable=False, server_default="0"),
    sa.Column("value", sa.Double),
    sa.Column("unit", sa.Text),
    sa.Column("extra", sa.Text),
    sa.Column("reading_key", sa.Text),
    # One index serves both a device's readings in time order and the natural-key rule: a
    # keyed reading is stored once per (device, time, key); NULL keys never collide. One index
    # rather than two: every frame's commit writes one page fewer.
    sa.Index("ux_readings_device_time_key", "device", "measured_at", "reading_key", unique=True),
    sqlite_with_rowid=False,
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text),
    sa.Column("name", sa.Text),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("first_seen", Time, nullable=False),
    sa.Column("last_seen", Time, nullable=False),
    sa.Column("message_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("flags", sa.Text, nullable=False, server_default="{}"),
    # The relayed network (trap network): role node/repeater/gateway, liveness and mapping.
    sa.Column("role", sa.Text),
    sa.Column("status", sa.Text, nullable=False, server_default="current"),
    sa.Column("status_since", Time),
    sa.Column("allowed_downtime_min", sa.Integer, nullable=False, server_default="60"),
    sa.Column("message_type", sa.Text),
    sa.Column("team", sa.Text),
)

message_types = sa.Table(
    "message_types",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("description", sa.Text),
    sa.Column("updated_at", Time, nullable=False),
)

message_type_fields = sa.Table(
    "message_type_fields",
    metadata,
    sa.Column(
        "message_type",
        sa.Text,
        sa.ForeignKey("message_types.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True),  # 0-based among the mapped values
    sa.Column("name", sa.Text),  # NULL: the position is skipped
    sa.Column("type", sa.Text, nullable=False, server_default="F"),
    sa.Column("is_tag", sa.Boolean, nullable=False, server_default=sa.false()),
)

node_gateways = sa.Table(
    "node_gateways",
    metadata,
    sa.Column("node", sa.Text, primary_key=True),
    sa.Column("via", sa.Text, primary_key=True),  # the gateway or repeater
    sa.Column("role", sa.Text, nullable=False, server_default="gateway"),
    sa.Column("last_seen", Time, nullable=False),
    sa.Index("ix_node_gateways_via", "via"),
)

device_transitions = sa.Table(
    "device_transitions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("from_status", sa.Text, nullable=False),
    sa.Column("to_status", sa.Text, nullable=False),
    sa.Column("at", Time, nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("notified_at", Time),
    sa.Index("ix_device_transitions_device", "device", "at"),
    sa.Index("ix_device_transitions_pending", "notified_at"),
)

device_subscribers = sa.Table(
    "device_subscribers",
    metadata,
    sa.Column("device", sa.Text, primary_key=True),
    sa.Column("channel", sa.Text, primary_key=True),  # email or sms
    sa.Column("address", sa.Text, primary_key=True),
)

sink_state = sa.Table(
    "sink_state",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("cursor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("state", sa.Text, nullable=False, server_default="idle"),
    sa.Column("last_error", sa.Text),
    sa.Column("replay_from", sa.BigInteger),
    sa.Column("updated_at", Time, nullable=False, server_default="0"),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("sink", sa.Text, nullable=False),
    sa.Column("message_id", sa.BigInteger, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("status", sa.Integer),
    sa.Column("body", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="dead"),
    sa.UniqueConstraint("sink", "message_id", name="uq_dead_letters_sink_message"),
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_at", Time, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index("ix_quarantine_received_at", "received_at"),
)

downlinks = sa.Table(
    "downlinks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device", sa.Text, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="queued"),
    sa.Column("meta", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("sent_at", Time),
    sa.Column("confirmed_at", Time),
    sa.Column("origin", sa.Text),
    sa.Column("fields", sa.Text),  # JSON: the settings as the queuer named them
    sa.Column("expect_hash_change", sa.Boolean),  # NULL: decided when sent
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("sent_hash", sa.BigInteger),
    sa.Column("failed_reason", sa.Text),
    sa.Column("failed_at", Time),
    sa.Index("ix_downlinks_device_state", "device", "state"),
)

oauth_tokens = sa.Table(
    "oauth_tokens",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),  # whose token: "sink:<name>"
    # Which endpoint, client and user it was issued for; another means the settings changed.
    sa.Column("fingerprint", sa.Text, nullable=False, server_default=""),
    sa.Column("access_token", sa.Text),
    sa.Column("refresh_token", sa.Text),  # the newest of a rotating refresh token
    sa.Column("token_type", sa.Text, nullable=False, server_default="Bearer"),
    sa.Column("expires_at", Time),
    sa.Column("updated_at", Time, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),  # in a row
    sa.Column("last_error", sa.Text),
    sa.Column("failed_at", Time),
)

sink_skips = sa.Table(
    "sink_skips",
    metadata,
    sa.Column("sink", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, primary_key=True),  # e.g. flag_off, unknown_device, bad_event
    sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_message_id", sa.BigInteger),
    sa.Column("updated_at", Time, nullable=False),
)

dunedb_actions = sa.Table(
    "dunedb_actions",
    metadata,
    sa.Column("sink", sa.Text, primary_key=True),
    sa.Column("message_id", sa.BigInteger, primary_key=True),
    # intended: written before the POST; created: the DB answered with `action_id`.
    sa.Column("state", sa.Text, nullable=False, server_default="intended"),
    sa.Column("component_uuid", sa.Text, nullable=False),
    sa.Column("form_id", sa.Text, nullable=False),
    sa.Column("readings", sa.Text, nullable=False, server_default="[]"),  # JSON: what it carries
    sa.Column("action_id", sa.Text),
    # POSTs that may have reached the DB (sent, and not refused): above 1, maybe duplicates.
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("intended_at", Time, nullable=False),
    sa.Column("created_at", Time),
)

source_cursors = sa.Table(
    "source_cursors",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    # Where the source goes on after a restart, in its transport's terms (a Redis stream's
    # entry id): written only after what it covers is committed.
    sa.Column("position", sa.Text, nullable=False),
    sa.Column("updated_at", Time, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),  # admin | viewer
    sa.Column("password_hash", sa.Text, nullable=False),  # argon2id; never the password
    sa.Column("created_at", Time, nullable=False),
    sa.Column("last_login", Time),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("scope", sa.Text, nullable=False),  # read | write
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),  # SHA-256 of the token
    sa.Column("created_at", Time, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("last_used", Time),
    sa.Column("revoked_at", Time),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id_hash", sa.Text, primary_key=True),  # SHA-256 of the cookie's value
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("csrf_token", sa.Text, nullable=False),
    sa.Column("created_at", Time, nullable=False),
    sa.Column("expires_at", Time, nullable=False),
    sa.Index("ix_sessions_username", "username"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", Time, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),  # a user name, or token:<name>
    sa.Column("action", sa.Text, nullable=False),  # e.g. device.update, sink.pause
    sa.Column("target", sa.Text, nullable=False, server_default=""),
    sa.Column("details", sa.Text, nullable=False, server_default="{}"),  # JSON
    sa.Index("ix_audit_log_at", "at"),
    sqlite_autoincrement=True,
)
