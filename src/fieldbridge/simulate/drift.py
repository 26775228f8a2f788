"""A measured quantity that wanders plausibly: a daily cycle, slow weather and sensor noise."""

from __future__ import annotations

import math
import random

DAY = 86_400.0


class Drift:
    """One quantity of one simulated device, sampled at any time in any order of calls.

    value(t) = centre + daily swing (peak mid-afternoon, local sun time at the device's
    longitude ignored) + a mean-reverting random walk (weather, a room warming) + noise; the
    result is kept inside [low, high] and rounded to `digits`. Seeded, so a re-run with the same
    seed starts from the same values.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        centre: float,
        swing: float,
        wander: float,
        noise: float,
        low: float,
        high: float,
        digits: int = 1,
    ) -> None:
        self._rng = rng
        self.centre = centre
        self.swing = swing
        self.wander = wander  # the walk's typical distance from the centre
        self.noise = noise
        self.low, self.high = low, high
        self.digits = digits
        self._walk = rng.gauss(0.0, wander / 2)
        self._walk_at: float | None = None

    def value(self, at: float) -> float:
        """The reading at Unix time `at`."""
        self._step(at)
        daily = self.swing * math.sin(2 * math.pi * ((at % DAY) / DAY - 0.375))  # peak 15:00
        raw = self.centre + daily + self._walk + self._rng.gauss(0.0, self.noise)
        return round(min(self.high, max(self.low, raw)), self.digits)

    def _step(self, at: float) -> None:
        # Ornstein-Uhlenbeck with a 30-minute memory: over a few minutes the walk moves by a
        # fraction of `wander`, so charts show a trend rather than white noise.
        if self._walk_at is None:
            self._walk_at = at
            return
        dt = abs(at - self._walk_at)
        self._walk_at = at
        if dt == 0:
            return
        keep = math.exp(-dt / 1800.0)
        spread = self.wander * math.sqrt(1 - keep * keep)
        self._walk = self._walk * keep + self._rng.gauss(0.0, spread)


class Battery:
    """A battery that drains a little with every transmission: percent and volts."""

    def __init__(self, rng: random.Random, *, full: float = 3.6, empty: float = 2.9) -> None:
        self.full, self.empty = full, empty
        self.level = rng.uniform(0.55, 0.98)  # share of charge left

    def drain(self, share: float = 0.0004) -> None:
        self.level = max(0.0, self.level - share)

    @property
    def percent(self) -> float:
        return round(100 * self.level, 1)

    @property
    def volts(self) -> float:
        return round(self.empty + (self.full - self.empty) * self.level, 2)

    @property
    def low(self) -> bool:
        return self.level < 0.15
