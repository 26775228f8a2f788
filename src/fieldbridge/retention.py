"""Retention: deletes journal rows and readings past their age that every sink has delivered."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fieldbridge.config import Settings
from fieldbridge.store import Store, Timeout

log = logging.getLogger("fieldbridge")
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class SinkHold:
    """One sink known to the settings or the store, and what it keeps from retention."""

    name: str
    configured: bool  # in the settings file; False: removed from it, state still stored
    enabled: bool
    cursor: int  # the lower of its cursor and a pending replay's start
    held_back: int  # journal rows past retention_days this sink has not delivered


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What one retention pass removed (or, with dry_run, would remove)."""

    dry_run: bool
    journal_older_than: float
    readings_older_than: float | None  # None: readings_retention_days = 0, readings kept
    delivered_upto: int  # rows at or below this id are delivered by every sink
    journal: int
    readings: int | None
    sinks: tuple[SinkHold, ...]


async def sink_holds(settings: Settings, store: Store, older_than: float) -> list[SinkHold]:
    """Every sink that counts for retention: each in the settings (enabled or not, stored
    or never run) and each with stored state, until `fieldbridge sinks forget` drops it."""
    configured = {s.name: s.enabled for _, s in settings.sink_settings}
    stored = {s.name: s for s in await store.sink_states()}
    holds = []
    for name in sorted(configured.keys() | stored.keys()):
        state = stored.get(name)
        cursor = 0 if state is None else state.cursor
        if state is not None and state.replay_from is not None:
            cursor = min(cursor, state.replay_from)  # the sink goes back there: keep those rows
        holds.append(
            SinkHold(
                name,
                name in configured,
                configured.get(name, False),
                cursor,
                await store.held_back(older_than, cursor),
            )
        )
    return holds


async def prune_once(
    settings: Settings, store: Store, *, dry_run: bool = False, now: float | None = None
) -> RetentionReport:
    """One retention pass; with no sink at all, rows go by age alone."""
    now = time.time() if now is None else now
    cutoff = now - settings.store.retention_days * DAY
    holds = await sink_holds(settings, store, cutoff)
    delivered = min(h.cursor for h in holds) if holds else await store.head_id()
    # A pass deletes a day's rows or more in one statement: it gets a deadline of its own.
    within = Timeout(settings.store.maintenance_timeout_s, "store.maintenance_timeout_s")
    journal = await store.prune(cutoff, delivered, dry_run=dry_run, within=within)
    readings_cutoff = readings = None
    if settings.store.readings_retention_days:
        readings_cutoff = now - settings.store.readings_retention_days * DAY
        readings = await store.prune_readings(
            readings_cutoff, delivered, dry_run=dry_run, within=within
        )
    return RetentionReport(
        dry_run, cutoff, readings_cutoff, delivered, journal, readings, tuple(holds)
    )


def log_report(report: RetentionReport) -> None:
    """What the service's periodic pass did, and which sinks keep rows past retention."""
    if report.journal or report.readings:
        log.info(
            "retention: pruned %d journal rows and %d readings delivered by every sink",
            report.journal,
            report.readings or 0,
        )
    for hold in report.sinks:
        if not hold.held_back:
            continue
        if hold.configured:
            log.info(
                "retention: sink %s (cursor %d%s) keeps %d journal rows past retention",
                hold.name,
                hold.cursor,
                "" if hold.enabled else ", disabled",
                hold.held_back,
            )
        else:
            log.warning(
                "retention: sink %s is no longer in the settings but keeps %d journal rows "
                "past retention (cursor %d); `fieldbridge sinks forget %s` lets them go",
                hold.name,
                hold.held_back,
                hold.cursor,
                hold.name,
            )
