"""Login rate limiting: failed attempts per user name and per client address in a window."""

from __future__ import annotations

import time
from collections import OrderedDict, deque

MAX_KEYS = 10_000  # names and addresses tracked at once; the oldest are forgotten past this


class LoginLimiter:
    """At most `max_failures` failed logins per key within `window_s` seconds."""

    def __init__(self, max_failures: int, window_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, keys: list[str], now: float | None = None) -> float:
        """Seconds until any of `keys` may try again; 0 when all may."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[0] + self.window_s - now)
        return wait

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in keys:
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
            while len(times) > self.max_failures:
                times.popleft()
        while len(self._failures) > MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, keys: list[str]) -> None:
        """A good password clears the user name's count (not the address's)."""
        for key in keys:
            if key.startswith("user:"):
                self._failures.pop(key, None)
