"""Queueing an Efento configuration downlink: one rule for the CLI, the API and the console."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fieldbridge.codecs.efento import changes_configuration
from fieldbridge.store import Store


async def queue_config(
    store: Store, device: str, payload: bytes, fields: Mapping[str, Any], origin: str
) -> int:
    """Queue an encoded configuration (`encode_config(fields)`); a downlink that sets a
    setting waits for the sensor's configuration hash to change. Returns the downlink's id."""
    return await store.queue_downlink(
        device,
        payload,
        origin=origin,
        fields=fields,
        expect_hash_change=changes_configuration(payload),
    )
