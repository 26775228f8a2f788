"""Prometheus metrics of ingest and sinks."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fieldbridge.model import Accepted, Incoming, Outcome

BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    """The metrics of one fieldbridge process, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingest = Counter(
            "fieldbridge_ingest_payloads",
            "Payloads handed to ingest, by source and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "fieldbridge_commit_batch_size",
            "Payloads per ingest transaction",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "fieldbridge_commit_seconds",
            "Duration of one ingest transaction",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.quarantined = Counter(
            "fieldbridge_quarantined",
            "Payloads, or refused items of stored payloads, put in quarantine",
            ["source"],
            registry=r,
        )
        self.rejected = Counter(
            "fieldbridge_rejected_payloads",
            "Payloads quarantined, by source and cause (e.g. unknown_token, unregistered_device)",
            ["source", "cause"],
            registry=r,
        )
        self.quarantine_size = Gauge(
            "fieldbridge_quarantine_size", "Payloads held in quarantine", registry=r
        )
        self.sink_sent = Counter(
            "fieldbridge_sink_sent_messages",
            "Messages a destination accepted",
            ["sink"],
            registry=r,
        )
        self.sink_failed = Counter(
            "fieldbridge_sink_failed_attempts", "Send attempts that failed", ["sink"], registry=r
        )
        self.sink_dead = Counter(
            "fieldbridge_sink_dead_lettered_messages",
            "Messages moved to the dead letters",
            ["sink"],
            registry=r,
        )
        self.sink_skipped = Counter(
            "fieldbridge_sink_skipped_messages",
            "Messages a sink read and did not send (kept in the journal), by reason: flag_off, "
            "unknown_device, or the destination's own (e.g. bad_event)",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_lag_messages = Gauge(
            "fieldbridge_sink_lag_messages", "Messages not yet delivered", ["sink"], registry=r
        )
        self.sink_lag_seconds = Gauge(
            "fieldbridge_sink_lag_seconds",
            "Age of the oldest undelivered message",
            ["sink"],
            registry=r,
        )

        self.in_flight_bytes = Gauge(
            "fieldbridge_ingest_in_flight_bytes",
            "Payload bytes handed to ingest (or reserved for a body being read), not yet answered",
            registry=r,
        )
        self.budget_refused = Counter(
            "fieldbridge_ingest_budget_refused",
            "Payloads refused (503) because ingest.max_in_flight_bytes stayed full",
            ["source"],
            registry=r,
        )
        self.spy_dropped = Counter(
            "fieldbridge_spy_dropped_lines",
            "Spy lines dropped because a watcher fell more than spy.queue_bytes behind",
            registry=r,
        )
        self.http_connections = Gauge(
            "fieldbridge_http_connections", "Open connections to the HTTP server", registry=r
        )
        self.http_closed = Counter(
            "fieldbridge_http_connections_closed",
            "Connections the HTTP server closed to protect others, by reason (header_timeout, "
            "body_timeout, evicted, refused, head_too_large)",
            ["reason"],
            registry=r,
        )
        self.http_client_disconnects = Counter(
            "fieldbridge_http_client_disconnects",
            "Requests whose client went away before they were answered",
            registry=r,
        )

    def count_ingest(self, batch: Sequence[Incoming], outcome: str) -> None:
        for source, n in Tally(item.source for item in batch).items():
            self.ingest.labels(source, outcome).inc(n)

    def observe_commit(
        self, batch: Sequence[Incoming], outcomes: Sequence[Outcome], seconds: float
    ) -> None:
        self.batch_size.observe(len(batch))
        self.commit_seconds.observe(seconds)
        tally: Tally[tuple[str, str]] = Tally()
        accepted: dict[str, int] = {}  # the common outcome, counted without a key tuple each
        for item, outcome in zip(batch, outcomes, strict=True):
            if (
                type(outcome) is Accepted
                and not outcome.duplicates
                and outcome.ids
                and not outcome.quarantined
            ):
                accepted[item.source] = accepted.get(item.source, 0) + 1
                continue
            if isinstance(outcome, Accepted):
                kind = "duplicate" if outcome.duplicates == len(outcome.ids) else "accepted"
                for part in outcome.quarantined:  # items refused beside the stored ones
                    self.quarantined.labels(item.source).inc()
                    self.rejected.labels(item.source, part.cause or "invalid").inc()
            else:
                kind = "rejected"
                self.quarantined.labels(item.source).inc()
                self.rejected.labels(item.source, outcome.cause or "invalid").inc()
            tally[(item.source, kind)] += 1
        for source, n in accepted.items():
            tally[(source, "accepted")] += n
        for (source, kind), n in tally.items():
            self.ingest.labels(source, kind).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
