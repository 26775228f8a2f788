"""Which cloud tokens may store frames: those in the settings, or a device's own attribute."""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence

from fieldbridge.errors import StoreError
from fieldbridge.sources.access import DeviceReader

TOKEN_TTL = 30.0  # seconds a device's allowed_cloud_token is trusted before a re-read
TOKEN_ATTRIBUTE = "allowed_cloud_token"
MAX_CACHED = 100_000  # devices whose allowed token is kept in memory


class TokenPolicy:
    """Admits a frame whose token is one of `tokens`, or its own device's allowed_cloud_token.

    A device's token is read from the registry and trusted for TOKEN_TTL seconds, so a
    sensor's frames cost no store read each; a store that fails refuses the device's token
    (the sensor retries) rather than admitting unknown frames.
    """

    def __init__(self, tokens: Sequence[str], devices: DeviceReader) -> None:
        self._tokens = [t.encode() for t in tokens]
        self._devices = devices
        self._allowed: dict[str, tuple[str | None, float]] = {}  # serial -> (token, read at)

    async def refusal(self, serial: str | None, token: str | None) -> str | None:
        """None if a frame of `serial` (None: unknown) carrying `token` may be stored, else
        why not, as the 4.01's diagnostic payload says it."""
        if token is None:
            return "no cloud token"
        if await self._allowed_token(serial, token):
            return None
        return "unknown cloud token"

    async def _allowed_token(self, serial: str | None, token: str) -> bool:
        given = token.encode()
        if any(hmac.compare_digest(given, t) for t in self._tokens):
            return True
        if serial is None:
            return False
        allowed = await self._registered(serial)
        return allowed is not None and hmac.compare_digest(given, allowed.encode())

    async def _registered(self, serial: str) -> str | None:
        now = time.monotonic()
        cached = self._allowed.get(serial)
        if cached is not None and now - cached[1] < TOKEN_TTL:
            return cached[0]
        try:
            device = await self._devices.get_device(serial)
        except StoreError:
            return None
        value = device.attributes.get(TOKEN_ATTRIBUTE) if device is not None else None
        token = str(value) if value else None
        if len(self._allowed) > MAX_CACHED:
            self._allowed.clear()
        self._allowed[serial] = (token, now)
        return token
