"""Process-wide runtime tuning applied once a service has started."""

from __future__ import annotations

import gc

# A busy ingest keeps hundreds of thousands of short-lived futures and records alive; with the
# default threshold (700) the collector runs every few hundred allocations and walks them all.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Move start-up objects out of the collector's sight and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
