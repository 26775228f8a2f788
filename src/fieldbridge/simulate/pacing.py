"""When each simulated device sends: its own period with jitter, first sends spread out."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

JITTER = 0.15  # each interval is the period ±15 %, so devices do not send in lock-step


def period_for(devices: int, rate: float) -> float:
    """Seconds between one device's sends so that `devices` together send `rate` a second."""
    return max(devices, 1) / rate


class Pacer:
    """Runs one device's sends until the deadline or `stop`: the first within one period
    (devices started together spread out), then every `period()` seconds ± jitter.

    `period` is asked again before each wait, so a device whose period changes (an Efento
    sensor that got a new transmission interval in a downlink) keeps its new pace.
    """

    def __init__(
        self,
        rng: random.Random,
        stop: asyncio.Event,
        deadline: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rng = rng
        self._stop = stop
        self._deadline = deadline  # on `clock`; None: until stopped
        self._clock = clock

    def stopping(self) -> bool:
        return self._stop.is_set() or (
            self._deadline is not None and self._clock() >= self._deadline
        )

    async def run(self, period: Callable[[], float], send: Callable[[], Awaitable[None]]) -> None:
        """Call `send` on the device's schedule; returns once stopped or past the deadline.
        A send that takes long delays the next one (a sensor sends one message at a time)."""
        if not await self._wait(self._rng.uniform(0.0, min(period(), 5.0))):
            return
        while True:
            started = self._clock()
            await send()
            interval = period() * self._rng.uniform(1 - JITTER, 1 + JITTER)
            if not await self._wait(interval - (self._clock() - started)):
                return

    async def _wait(self, seconds: float) -> bool:
        """Sleep `seconds` (less at the deadline); False when it is time to stop."""
        if self.stopping():
            return False
        if self._deadline is not None:
            seconds = min(seconds, self._deadline - self._clock())
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)
        return not self.stopping()
