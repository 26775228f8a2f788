"""Chart data as the console's uPlot charts take it: shared x values and one series each."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fieldbridge.store.activity import IngestBucket, Point


def rate_chart(
    buckets: Sequence[IngestBucket], since: float, until: float, width: int
) -> dict[str, Any]:
    """Messages per bucket for each source, every bucket from `since` to `until` present."""
    first = math.floor(since / width) * width
    starts = [float(t) for t in range(int(first), int(until) + 1, width)]
    index = {start: i for i, start in enumerate(starts)}
    series: dict[str, list[float]] = {}
    for bucket in buckets:
        values = series.setdefault(bucket.source, [0.0] * len(starts))
        i = index.get(bucket.start)
        if i is not None:
            values[i] = float(bucket.messages)
    return {
        "x": starts,
        "series": [
            {"label": source, "values": values} for source, values in sorted(series.items())
        ],
        "y_label": f"messages per {width // 60} min" if width >= 60 else f"messages per {width} s",
    }


def quantity_chart(quantity: str, points: Sequence[Point]) -> dict[str, Any]:
    """One quantity's readings, a series per channel (most sensors have one)."""
    unit = next((p.unit for p in points if p.unit), None)
    channels = sorted({p.channel for p in points})
    xs = sorted({p.measured_at for p in points})
    index = {x: i for i, x in enumerate(xs)}
    series: dict[int, list[float | None]] = {ch: [None] * len(xs) for ch in channels}
    for p in points:
        series[p.channel][index[p.measured_at]] = p.value
    label = quantity if len(channels) == 1 else None
    return {
        "x": xs,
        "series": [
            {"label": label or f"{quantity} ch{ch}", "values": values}
            for ch, values in series.items()
        ],
        "y_label": f"{quantity} ({unit})" if unit else quantity,
        "points": len(points),
    }
