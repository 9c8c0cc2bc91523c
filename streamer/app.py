"""The streamer daemon's loop: poll → parse → validate → reward → features → append; seal; commit.

    poll (1 s) ──► parse_event ──ok──► compute_reward ──► writer.append (features into the open segment)
                       │ InvalidEvent
                       ▼
                  dead letters (counted by reason; the stream never stops for one bad record)

    every seal (rows or age):  dead letters durable ──► segment + manifest durable ──► commit to Kafka

A disk or broker error while sealing pauses consumption, keeps the unsealed rows in memory and retries with
backoff (still polling, so the consumer keeps its group membership); after `max_retry_s` the daemon exits
non-zero without committing, and a restart replays from the stored positions. SIGTERM/SIGINT only call
`stop()`: the loop then seals what it holds, commits and closes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka.errors import KafkaError

from common.reward import RewardConfig, compute_reward
from common.schema import InvalidEvent, parse_event
from streamer.dlq import DeadLetters
from streamer.metrics import StreamerMetrics
from streamer.sources import Record, Source
from streamer.writer import BufferWriter

log = logging.getLogger(__name__)


class StreamerStopped(RuntimeError):
    """The loop gave up after retrying a disk or broker error for too long."""


class Streamer:
    def __init__(
        self,
        source_factory: Callable[[Streamer], Source],
        writer: BufferWriter,
        dead_letters_factory: Callable[[], DeadLetters],
        metrics: StreamerMetrics,
        reward_config: RewardConfig | None = None,
        max_retry_s: float = 300.0,
        stop_when_idle_s: float | None = None,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.reward_config = reward_config or RewardConfig()
        self.max_retry_s = max_retry_s
        self.stop_when_idle_s = stop_when_idle_s
        # Held while the main thread touches the writer; kafka-python's rebalance listener takes it to drop
        # the unsealed rows of revoked partitions. Never held across a blocking consumer call.
        self.lock = threading.Lock()
        self.running = False
        self.paused = False
        self.source = source_factory(self)  # first: a bad address or bad credentials fail fast here
        try:
            self.dead_letters = dead_letters_factory()
        except Exception:
            self.source.close()
            raise

    def stop(self) -> None:
        self.running = False

    def drop_partitions(self, keys: set[str]) -> None:
        """Rebalance: forget unsealed rows of partitions this process no longer owns (called on the IO thread)."""
        with self.lock:
            dropped = self.writer.drop(keys)
        if dropped:
            log.info("streamer dropped unsealed rows=%d of revoked partitions=%s", dropped, sorted(keys))

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> int:
        self.running = True
        idle_since = time.monotonic()
        try:
            while self.running:
                records = self.source.poll(1.0)
                if records or not self.source.caught_up():
                    idle_since = time.monotonic()
                    with self.metrics.batch_seconds.time(), self.lock:
                        self.process(records)
                if self.writer.should_seal():
                    self.checkpoint()
                if self.stop_when_idle_s is not None and time.monotonic() - idle_since >= self.stop_when_idle_s:
                    log.info("streamer idle for %.0fs: stopping", self.stop_when_idle_s)
                    break
            self.checkpoint()
            return 0
        finally:
            self.dead_letters.close()
            self.source.close()

    def process(self, records: list[Record]) -> None:
        m = self.metrics
        valid = []
        rejected = 0
        for r in records:
            try:
                ev = parse_event(r.value)
            except InvalidEvent as e:
                self.dead_letters.write(r, e)
                self.writer.advance(r.key, r.next_position)
                m.rejected.labels(reason=e.reason).inc()
                rejected += 1
                continue
            valid.append((r.key, r.offset, r.next_position, ev, compute_reward(ev, self.reward_config)))
        appended = self.writer.append_batch(valid)
        m.consumed.inc(len(records))
        m.appended.inc(appended)
        m.dlq_writes.inc(rejected)
        m.duplicates.inc(len(valid) - appended)
        m.unsealed_rows.set(self.writer.unsealed_rows)

    def checkpoint(self) -> None:
        """Make everything processed durable, then commit; on disk or broker errors pause and retry."""
        started = time.monotonic()
        delay = 0.5
        while True:
            try:
                with self.lock:
                    self.dead_letters.flush()
                    before = self.writer.segments_sealed, self.writer.evicted_segments
                    positions = self.writer.seal()
                break
            except OSError as e:
                self._failed("disk", e, started, delay)
            except KafkaError as e:  # the dead-letter producer could not get a record confirmed
                self._failed("dlq", e, started, delay)
            delay = min(delay * 2, 10.0)
        if self.paused:  # resumed after an error
            self.paused = False
            self.source.resume()
            self.metrics.paused.set(0)
            log.info("streamer resumed: seal succeeded")
        self.metrics.sealed.inc(self.writer.segments_sealed - before[0])
        self.metrics.evicted.inc(self.writer.evicted_segments - before[1])
        if positions:
            if not self.source.commit(positions):
                self.metrics.errors.labels(kind="commit").inc()
            self.metrics.last_commit.set(time.time())
        self.metrics.unsealed_rows.set(self.writer.unsealed_rows)
        self._refresh_gauges()

    def _failed(self, kind: str, e: Exception, started: float, delay: float) -> None:
        self.metrics.errors.labels(kind=kind).inc()
        elapsed = time.monotonic() - started
        if elapsed >= self.max_retry_s:
            raise StreamerStopped(f"{kind} error persisted for {elapsed:.0f}s, nothing committed: {e}") from e
        if not self.paused:
            self.paused = True
            self.source.pause()
            self.metrics.paused.set(1)
        log.error("streamer %s error, consumption paused, nothing committed; retrying in %.1fs: %s", kind, delay, e)
        # Keep polling while paused: the consumer stays in its group (paused partitions return nothing).
        self.source.poll(delay)

    def _refresh_gauges(self) -> None:
        m = self.writer.dir.read_manifest()
        self.metrics.buffer_rows.set(sum(s["rows"] for s in m.segments))
        self.metrics.buffer_bytes.set(sum(s["bytes"] for s in m.segments))
        for part, lag in self.source.lag().items():
            self.metrics.lag.labels(partition=part).set(lag)
