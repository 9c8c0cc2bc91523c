"""Prometheus metrics of the streamer (`rankrl_streamer_…`). The registry is passed in, so tests get a fresh one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.schema import REASONS

ERROR_KINDS = ("disk", "broker", "commit", "dlq")


class StreamerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "rankrl_streamer_"
        self.consumed = Counter(p + "events_consumed", "Records read from the source", registry=registry)
        self.appended = Counter(p + "events_appended", "Valid events appended to the buffer", registry=registry)
        self.rejected = Counter(
            p + "events_rejected", "Records rejected by validation, by reason", ["reason"], registry=registry
        )
        self.duplicates = Counter(
            p + "duplicates", "Events dropped as duplicates of a stored log id", registry=registry
        )
        self.dlq_writes = Counter(
            p + "dlq_writes", "Dead letters made durable (file fsynced, or confirmed by the broker)", registry=registry
        )
        self.sealed = Counter(p + "segments_sealed", "Segments sealed durably", registry=registry)
        self.evicted = Counter(p + "segments_evicted", "Segments removed by retention", registry=registry)
        # Labelled by the buffer's path: streamers sharing a buffer report the same rows, which a dashboard counts
        # once (max by buffer), not once per streamer.
        self.buffer_rows = Gauge(p + "buffer_rows", "Rows in sealed segments of the buffer", ["buffer"],
                                 registry=registry)  # fmt: skip
        self.buffer_bytes = Gauge(p + "buffer_bytes", "Bytes of sealed segments of the buffer", ["buffer"],
                                  registry=registry)  # fmt: skip
        self.unsealed_rows = Gauge(p + "unsealed_rows", "Rows in memory awaiting a seal", registry=registry)
        self.lag = Gauge(
            p + "consumer_lag", "Records behind the end of each partition owned (Kafka), refreshed every second",
            ["partition"], registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            p + "batch_processing_seconds",
            "Time to parse, validate and append one polled batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.last_commit = Gauge(
            p + "last_commit_timestamp_seconds", "When positions were last made durable", registry=registry
        )
        self.errors = Counter(
            p + "errors", "Errors by kind (the stream stops and retries)", ["kind"], registry=registry
        )
        self.paused = Gauge(p + "paused", "1 while consumption is paused by an error or a broker outage",
                            registry=registry)  # fmt: skip
        self.newest_event = Gauge(p + "newest_event_timestamp_seconds", "Event time of the newest row appended "
                                  "(alert on staleness: time() minus this)", registry=registry)  # fmt: skip
        # the outcome join (streamer/join.py), when the streamer reads serve's decisions and outcomes
        self.join_open = Gauge(p + "join_open_decisions", "Decisions waiting for their window to close",
                               registry=registry)  # fmt: skip
        self.join_waiting = Gauge(p + "join_waiting_outcomes", "Outcomes waiting for a decision not yet read",
                                  registry=registry)  # fmt: skip
        self.join_emitted = Counter(p + "join_events", "Joined events by outcome: reported, or the default none",
                                    ["outcome"], registry=registry)  # fmt: skip
        self.join_reread = Counter(p + "join_reread_records", "Records read again after a restart that belong to "
                                   "events already stored (skipped)", registry=registry)  # fmt: skip
        self.join_duplicates = Counter(p + "join_duplicate_deliveries", "Decisions delivered twice with the same "
                                       "weights (counted once)", registry=registry)  # fmt: skip
        self.join_retractions = Counter(p + "join_retractions", "Retractions of refused requests, by result: "
                                        "applied, or too_late (what they named was stored)", ["result"],
                                        registry=registry)  # fmt: skip
        for o in ("reported", "default"):
            self.join_emitted.labels(outcome=o)
        for res in ("applied", "too_late"):
            self.join_retractions.labels(result=res)
        for r in REASONS:
            self.rejected.labels(reason=r)
        for k in ERROR_KINDS:
            self.errors.labels(kind=k)

    def value(self, name: str) -> float:
        """A sample's current value by its exposed name (`events_consumed_total`), for the periodic summary."""
        return self.registry.get_sample_value("rankrl_streamer_" + name) or 0.0
