"""What a 2.01 to a CON frame carries: queued downlinks, the clock and a configuration request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from fieldbridge.codecs import efento
from fieldbridge.errors import DecodeError, StoreError
from fieldbridge.model import Downlink, DownlinkState
from fieldbridge.sources.access import DeviceReader, DownlinkQueue

log = logging.getLogger("fieldbridge.sources.efento")

HASH_TTL = 300.0  # seconds a device's stored configuration hash is trusted before a re-read
MAX_CACHED = 200_000  # devices whose stored hash is kept in memory
QUEUED, SENT = DownlinkState.QUEUED, DownlinkState.SENT


class Later:
    """Answer needs the store: finish in a task."""


LATER = Later()


@dataclass(slots=True)
class _Hash:
    value: int | None  # None: no /c stored yet
    read_at: float


class DownlinkPlanner:
    """Builds the payload of the answer to a sensor's CON /m or /i, and follows up on /c.

    Which devices have downlinks is polled from the store every `poll` seconds (the CLI and
    other processes queue them), so an answer to a device with none costs no store access.
    """

    def __init__(
        self,
        downlinks: DownlinkQueue,
        devices: DeviceReader,
        *,
        where: str,
        poll: float,
        attempts: int,
        config_request: str,
    ) -> None:
        self._downlinks = downlinks
        self._devices = devices
        self._where = where
        self._poll = poll
        self._attempts = attempts
        self._config_request = config_request
        self._states: dict[str, set[DownlinkState]] = {}  # device -> {QUEUED, SENT}
        self._hashes: dict[str, _Hash] = {}
        self._incomplete: set[str] = set()  # devices whose last split /c lacked parts
        self._task: asyncio.Task[None] | None = None
        # Downlinks queued in this process since a refresh began (device -> sequence number),
        # so a refresh that read the store just before one was queued does not hide it.
        self._queued_seq = 0
        self._queued_here: dict[str, int] = {}
        downlinks.on_downlink_queued(self._queued)

    def _queued(self, device: str) -> None:
        self._queued_seq += 1
        self._queued_here[device] = self._queued_seq
        self._states.setdefault(device, set()).add(QUEUED)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever(), name=f"{self._where}-downlinks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Read which devices have queued or sent downlinks now."""
        began = self._queued_seq
        states = await self._downlinks.downlink_states()
        self._queued_here = {d: n for d, n in self._queued_here.items() if n > began}
        for device in self._queued_here:
            states.setdefault(device, set()).add(QUEUED)
        self._states = states

    async def _poll_forever(self) -> None:
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    log.info("%s: downlink queue readable again", self._where)
                failing = False
            except StoreError as exc:
                if not failing:
                    log.warning("%s: cannot read the downlink queue: %s", self._where, exc)
                failing = True
            await asyncio.sleep(self._poll)

    # --- after a commit --------------------------------------------------------------------

    def settle_now(
        self, endpoint: str, serial: str, config_hash: int | None, con: bool, now: float
    ) -> bytes | Later | None:
        """`settle` without the store, which the common case (no downlinks, a known hash)
        does not need; LATER when it does. Saves a task per frame on the hot path."""
        states = self._states.get(serial)
        if endpoint == "c":
            if states and SENT in states:
                return LATER
            if config_hash is not None:
                self._remember(serial, config_hash, now)
                self._incomplete.discard(serial)
            return None
        if endpoint == "i" and states and SENT in states:
            return LATER
        if not con:
            return None
        frame_hash = config_hash if endpoint == "m" else None
        if states and (QUEUED in states or (SENT in states and frame_hash is not None)):
            return LATER
        request = self._wants_configuration_cached(serial, frame_hash, now)
        if isinstance(request, Later):
            return LATER
        return self._payload([], request, now)

    async def settle(
        self, endpoint: str, serial: str, config_hash: int | None, con: bool, now: float
    ) -> bytes | None:
        """Follow up a committed frame and return the payload of its 2.01 (None: empty).

        /c (a whole configuration): remember its hash, confirm the downlinks it shows applied.
        /i: confirm request-only downlinks. CON /m and /i: queued downlinks, the clock, and a
        configuration request when the frame's hash differs from the stored one.
        """
        if endpoint == "c":
            if config_hash is not None:
                await self.configuration_stored(serial, config_hash, now)
            return None
        if endpoint == "i":
            await self.device_info_stored(serial, now)
        if not con:
            return None
        return await self.answer(serial, config_hash if endpoint == "m" else None, now)

    # --- answers ---------------------------------------------------------------------------

    async def answer(self, serial: str, frame_hash: int | None, now: float) -> bytes | None:
        """The ProtoConfig for the 2.01 to a committed CON frame, or None if nothing to say.

        Queued downlinks are marked sent here; a configuration downlink the sensor got but
        did not apply (its hash is still the one it had) is sent again, up to `attempts`.
        """
        states = self._states.get(serial)
        taken: list[Downlink] = []
        if states:
            if (
                SENT in states
                and frame_hash is not None
                and await self._resend_unapplied(serial, frame_hash, now)
            ):
                states.add(QUEUED)
            if QUEUED in states:
                taken = await self._take(serial, frame_hash, now)
                states.discard(QUEUED)
                if taken:
                    states.add(SENT)
        request = await self._wants_configuration(serial, frame_hash, now)
        try:
            payload = self._payload(taken, request, now)
        except DecodeError:
            # A queued payload that is no ProtoConfig would make every answer fail: drop it.
            bad = [d.id for d in taken if not efento.is_config(d.payload)]
            await self._downlinks.fail_downlinks(bad, "payload is not a ProtoConfig", now)
            log.error(
                "%s: downlinks %s of %s are not ProtoConfig; failed", self._where, bad, serial
            )
            taken = [d for d in taken if d.id not in bad]
            payload = self._payload(taken, request, now)
        if payload is not None and taken:
            log.info(
                "%s: sending downlinks %s to %s (%d bytes)",
                self._where,
                ", ".join(str(d.id) for d in taken),
                serial,
                len(payload),
            )
        return payload

    async def _take(self, serial: str, frame_hash: int | None, now: float) -> list[Downlink]:
        """Mark the queued downlinks sent with the hash the sensor has now: the frame's, else
        that of its last stored /c, read afresh (another process may have stored it)."""
        known = frame_hash
        if known is None:
            self._hashes.pop(serial, None)
            known = await self.stored_hash(serial, now)
        return await self._downlinks.take_downlinks(
            serial, now, known_hash=known, expects_change=efento.changes_configuration
        )

    @staticmethod
    def _payload(taken: Sequence[Downlink], request: bool, now: float) -> bytes | None:
        """Downlinks merged with the clock and maybe a configuration request; None if none."""
        return efento.answer_payload([d.payload for d in taken], now, configuration_request=request)

    async def _resend_unapplied(self, serial: str, frame_hash: int, now: float) -> bool:
        """Requeue sent downlinks the frame shows unapplied; True if any was requeued."""
        again: list[int] = []
        give_up: list[int] = []
        for d in await self._downlinks.pending_downlinks(serial):
            if d.state != SENT or d.expect_hash_change is False or d.sent_hash != frame_hash:
                continue
            (again if max(d.attempts, 1) < self._attempts else give_up).append(d.id)
        if give_up:
            await self._downlinks.fail_downlinks(
                give_up, f"configuration hash still {frame_hash} after {self._attempts} sends", now
            )
            log.warning(
                "%s: %s never applied downlinks %s (hash still %d); marked failed",
                self._where,
                serial,
                give_up,
                frame_hash,
            )
        return bool(again) and await self._downlinks.requeue_downlinks(again) > 0

    async def _wants_configuration(self, serial: str, frame_hash: int | None, now: float) -> bool:
        wanted = self._wants_configuration_cached(serial, frame_hash, now)
        if not isinstance(wanted, Later):
            return wanted
        return await self.stored_hash(serial, now) != frame_hash

    def _wants_configuration_cached(
        self, serial: str, frame_hash: int | None, now: float
    ) -> bool | Later:
        if self._config_request == "never":
            return False
        if self._config_request == "always" or serial in self._incomplete:
            return True
        if frame_hash is None:
            return False
        cached = self._hashes.get(serial)
        if cached is None or now - cached.read_at >= HASH_TTL:
            return LATER
        return cached.value != frame_hash

    async def stored_hash(self, serial: str, now: float) -> int | None:
        """The configuration hash of the device's last stored /c (cached for HASH_TTL)."""
        cached = self._hashes.get(serial)
        if cached is not None and now - cached.read_at < HASH_TTL:
            return cached.value
        device = await self._devices.get_device(serial)
        value = device.attributes.get(efento.HASH_ATTRIBUTE) if device is not None else None
        self._remember(serial, value if isinstance(value, int) else None, now)
        return self._hashes[serial].value

    def _remember(self, serial: str, value: int | None, now: float) -> None:
        if len(self._hashes) >= MAX_CACHED and serial not in self._hashes:
            self._hashes.pop(next(iter(self._hashes)))  # the oldest entry
        self._hashes[serial] = _Hash(value, now)

    # --- follow-ups ------------------------------------------------------------------------

    async def configuration_stored(self, serial: str, config_hash: int, now: float) -> None:
        """A complete /c was committed: remember its hash, confirm what it shows applied."""
        self._remember(serial, config_hash, now)
        self._incomplete.discard(serial)
        await self._confirm(serial, config_hash, now)

    async def device_info_stored(self, serial: str, now: float) -> None:
        await self._confirm(serial, None, now)

    def configuration_incomplete(self, serial: str) -> None:
        """A split /c lacked parts: ask for the configuration again with the next answer."""
        self._incomplete.add(serial)

    async def _confirm(self, serial: str, config_hash: int | None, now: float) -> None:
        states = self._states.get(serial)
        if not states or "sent" not in states:
            return
        confirmed = await self._downlinks.confirm_downlinks(serial, config_hash, now)
        if confirmed:
            log.info("%s: %s confirmed %d downlinks", self._where, serial, confirmed)
            remaining = await self._downlinks.pending_downlinks(serial)
            if not any(d.state == SENT for d in remaining):
                states.discard(SENT)
