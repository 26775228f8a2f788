"""Node ids of the trap network: which are valid, and which are skipped on purpose."""

from __future__ import annotations

import re

from fieldbridge.errors import DecodeError

# As the original Monitor's node_validate: letters, digits, _ and -; its own id excluded.
NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
OWN_ID = "sys-monitor"


def node_id(value: object, where: str) -> str:
    """`value` as a node id, or a DecodeError (cause invalid_node_id) saying what is wrong."""
    if type(value) is int and not isinstance(value, bool):
        value = str(value)
    if type(value) is not str:
        raise DecodeError(
            f"{where}: a node id must be text, got {type(value).__name__}", cause="invalid_node_id"
        )
    text = value.strip()
    if text == OWN_ID:
        raise DecodeError(
            f"{where}: {OWN_ID!r} is the monitor's own id, not a node", cause="invalid_node_id"
        )
    if not NODE_ID.fullmatch(text):
        shown = text[:40].encode("unicode_escape").decode("ascii")
        raise DecodeError(
            f"{where}: {shown!r} is not a node id (1 to 64 of A-Z a-z 0-9 _ -)",
            cause="invalid_node_id",
        )
    return text


def ignored(reason: str) -> DecodeError:
    """A message skipped on purpose: kept in quarantine with cause `ignored`, not an error."""
    return DecodeError(f"ignored: {reason}", cause="ignored")
