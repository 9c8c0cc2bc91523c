"""The streamer daemon's loop: poll → parse → validate → reward → features → append; seal; commit.

    poll (1 s) ──► parse worker: parse_event, compute_reward, features ──► columns + errors
                                                                               │ (in poll order)
                   writer.append_columns (dedup; the open segment) ◄──ok───────┤
                   dead letters (counted by reason; the stream never stops) ◄──┘ InvalidEvent

    every seal (rows or age):  dead letters durable ──► segment + manifest durable ──► commit to Kafka

Parsing runs in a worker process (`streamer/parsepool.py`) while this thread polls the next batch; everything
with state — positions, order, dedup, dead letters, the writer — stays here.

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
from typing import Any

import numpy as np
from kafka.errors import KafkaError

from common.config import StreamerConfig
from common.reward import RewardConfig
from common.schema import InvalidEvent
from streamer.dlq import DeadLetters
from streamer.encode import error_of
from streamer.metrics import StreamerMetrics
from streamer.parsepool import Batch, ParsePool
from streamer.sources import Record, Source
from streamer.writer import BufferWriter

log = logging.getLogger(__name__)

SUMMARY_INTERVAL_S = 60.0  # a long-running daemon says how it is doing, not only when it starts and stops
BROKER_GRACE_S = 3.0  # no broker connected this long is an outage (a reconnect takes well under a second)


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
        max_retry_s: float = StreamerConfig.max_retry_s,
        stop_when_idle_s: float | None = None,
        parse_workers: int = StreamerConfig.parse_workers,
        max_pending: int = 5000,
        max_pending_bytes: int = StreamerConfig.max_pending_bytes,
        dlq_flush_bytes: int = StreamerConfig.dlq_flush_bytes,
        max_record_bytes: int = StreamerConfig.max_record_bytes,
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
        self.paused = False  # after a disk or dead-letter error, until a seal succeeds
        self.broker_down = False  # no broker reachable for BROKER_GRACE_S: an outage, reported and not idle
        self._down_since: float | None = None
        self._broker_checked = 0.0
        self._gauges_at = 0.0  # when the lag gauges were last refreshed
        self._summary_at = time.monotonic()
        self._lag_labels: set[str] = set()
        self.newest_event_time = 0.0
        self.buffer_rows = 0  # sealed rows in the buffer when last read (the gauge, and the summary line)
        self.progress: Any = None  # a tqdm bar (rankrl stream --progress): events read against events readable
        # Revocations so far, and each one's partitions: a batch polled before a revocation skips those.
        self._revocations = 0
        self._revoked: dict[int, set[str]] = {}
        self.source = source_factory(self)  # first: a bad address or bad credentials fail fast here
        try:
            self.dead_letters = dead_letters_factory()
        except Exception:
            self.source.close()
            raise
        self.pool = ParsePool(parse_workers, self.reward_config, max_record_bytes)
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.dlq_flush_bytes = dlq_flush_bytes

    def stop(self) -> None:
        self.running = False

    def drop_partitions(self, keys: set[str]) -> None:
        """Rebalance: forget unsealed rows of partitions this process no longer owns (called on the IO thread)."""
        with self.lock:
            dropped = self.writer.drop(keys)
            self._revocations += 1
            self._revoked[self._revocations] = set(keys)
        if dropped:
            log.info("streamer dropped unsealed rows=%d of revoked partitions=%s", dropped, sorted(keys))

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> int:
        self.running = True
        idle_since = time.monotonic()
        pool = self.pool
        # Records polled while the worker was busy, and the revocation count before the first of their polls.
        pending: list[Record] = []
        pending_bytes = 0
        pending_since = 0
        try:
            while self.running:
                since = self._revocations  # before the poll: a revocation during it must not be missed
                busy = bool(pending or pool.in_flight)
                full = len(pending) >= self.max_pending or pending_bytes >= self.max_pending_bytes
                records = [] if full else self.source.poll(0.0 if busy else 1.0)
                if records:
                    if not pending:
                        pending_since = since
                    pending.extend(records)
                    pending_bytes += sum(len(r.value or b"") for r in records)
                # Keep polling while the worker encodes; wait for it only with nothing new to read or enough
                # records (or bytes) gathered for its next batch (an idle worker is fed at once).
                done = None
                if pool.in_flight and (not records or full or pool.ready()):
                    done = pool.collect()
                if pending and not pool.full():
                    pool.submit(pending, pending_since)
                    pending, pending_bytes = [], 0
                if done is not None:
                    self.apply(done)
                if pool.workers == 0:
                    self.drain()
                self._watch_broker()
                self._refresh_lag()
                if busy or records or self._down_since is not None or not self.source.caught_up():
                    idle_since = time.monotonic()  # a broker outage is never idleness (--stop-when-idle)
                if self.writer.should_seal() or self.dead_letters.pending_bytes >= self.dlq_flush_bytes:
                    self.checkpoint()
                if self.stop_when_idle_s is not None and time.monotonic() - idle_since >= self.stop_when_idle_s:
                    log.info("streamer idle for %.0fs: stopping", self.stop_when_idle_s)
                    break
            if pending:
                self.drain()
                self.pool.submit(pending, pending_since)
            self.drain()
            self.checkpoint()
            self._show_progress(self.source.lag())
            return 0
        finally:
            self.pool.close()
            self.dead_letters.close()
            self.source.close()

    def _watch_broker(self) -> None:
        """A source that lost its broker reads nothing and its lag looks stale-but-zero: say it is an outage
        (errors_total{kind="broker"}, paused 1, an error in the log) instead of looking idle; clear it when the
        broker is back."""
        now = time.monotonic()
        if now - self._broker_checked < 0.2:
            return
        self._broker_checked = now
        if self.source.connected():
            if self.broker_down:
                log.info("streamer: broker reachable again after %.0fs: consuming", now - (self._down_since or now))
                self.broker_down = False
                self.metrics.paused.set(1 if self.paused else 0)
            self._down_since = None
            return
        if self._down_since is None:
            self._down_since = now
        if not self.broker_down and now - self._down_since >= BROKER_GRACE_S:
            self.broker_down = True
            self.metrics.errors.labels(kind="broker").inc()
            self.metrics.paused.set(1)
            log.error("streamer: no broker reachable for %.0fs: consumption paused until one is (stored rows and "
                      "positions are durable; nothing is lost)", now - self._down_since)  # fmt: skip

    def drain(self) -> None:
        while self.pool.in_flight:
            self.apply(self.pool.collect())

    def apply(self, batch: Batch) -> None:
        """Dead-letter the rejected records of an encoded batch and append the rest, in poll order."""
        with self.metrics.batch_seconds.time(), self.lock:
            self._apply(batch)

    def _apply(self, batch: Batch) -> None:
        m, records, enc = self.metrics, batch.records, batch.result
        assert enc is not None
        skip: set[str] = set()
        for g, keys in self._revoked.items():
            if g > batch.since:
                skip |= keys
        for entry in enc.errors:
            r = records[entry[0]]
            if r.key in skip or r.marker:
                continue  # revoked while in flight: the next owner reads it again; a marker has no value
            self.dead_letter(r, error_of(entry))
            self.writer.advance(r.key, r.next_position)
        ok = [records[i] for i in enc.ok.tolist()]
        cols = enc.columns
        if skip:
            keep = np.array([r.key not in skip for r in ok], dtype=bool)
            ok = [r for r, k in zip(ok, keep, strict=True) if k]
            cols = {name: col[keep] for name, col in cols.items()}
        appended = self.writer.append_columns(
            [r.key for r in ok], [r.offset for r in ok], [r.next_position for r in ok], cols
        )
        for r in records:  # the outcome join's positions: the oldest record it still holds, per partition
            if r.positions is not None and r.key not in skip:
                for key, nxt in r.positions.items():
                    if key not in skip:
                        self.writer.advance(key, nxt)
        m.consumed.inc(sum(not r.marker for r in records))
        m.appended.inc(appended)
        if len(cols["event_time"]):
            self.newest_event_time = max(self.newest_event_time, float(cols["event_time"].max()))
            m.newest_event.set(self.newest_event_time)
        m.duplicates.inc(len(ok) - appended)
        m.unsealed_rows.set(self.writer.unsealed_rows)
        # Forget revocations no batch in flight predates.
        oldest = min((b.since for b in self.pool.in_flight), default=self._revocations)
        for g in [g for g in self._revoked if g <= oldest]:
            del self._revoked[g]

    def dead_letter(self, record: Record, error: InvalidEvent) -> None:
        """Route one record to the dead-letter sink, counted by reason (durable before the next seal's commit)."""
        self.dead_letters.write(record, error)
        self.metrics.rejected.labels(reason=error.reason).inc()

    def checkpoint(self) -> None:
        """Make everything processed durable, then commit; on disk or broker errors pause and retry."""
        started = time.monotonic()
        delay = 0.5
        while True:
            try:
                with self.lock:
                    self.metrics.dlq_writes.inc(self.dead_letters.flush())  # counted once the sink confirmed
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
            self.metrics.paused.set(1 if self.broker_down else 0)
            log.info("streamer resumed: seal succeeded")
        self.metrics.sealed.inc(self.writer.segments_sealed - before[0])
        self.metrics.evicted.inc(self.writer.evicted_segments - before[1])
        if positions:
            self.dead_letters.sealed(positions)
            if self.broker_down:  # a commit would block for its timeout; the stored positions are what count
                log.warning("streamer: broker down, offsets not committed (stored positions are durable)")
            elif self.source.commit(positions):
                self.metrics.last_commit.set(time.time())
            else:
                self.metrics.errors.labels(kind="commit").inc()
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
        self._refresh_lag()

    def _show_progress(self, lag: dict[str, int]) -> None:
        """The backfill bar: events consumed of consumed + lag (Kafka); a file source has no lag, only the count."""
        bar = self.progress
        if bar is None or bar.disable:
            return
        done = int(self.metrics.value("events_consumed_total"))
        bar.total = done + sum(lag.values()) if lag else None
        bar.n = done
        bar.refresh()

    def _refresh_gauges(self) -> None:
        m = self.writer.dir.read_manifest()
        buffer = str(self.writer.dir.path.resolve())
        self.buffer_rows = sum(s["rows"] for s in m.segments)
        self.metrics.buffer_rows.labels(buffer=buffer).set(self.buffer_rows)
        self.metrics.buffer_bytes.labels(buffer=buffer).set(sum(s["bytes"] for s in m.segments))

    def _refresh_lag(self) -> None:
        """Every second, seals or not: the lag of each partition owned now (a revoked one's series is removed,
        not left stale), and once a minute a one-line summary in the log."""
        now = time.monotonic()
        if now - self._gauges_at < 1.0:
            return
        self._gauges_at = now
        lag = self.source.lag()
        for gone in self._lag_labels - lag.keys():
            self.metrics.lag.remove(gone)
        for part, n in lag.items():
            self.metrics.lag.labels(partition=part).set(n)
        self._lag_labels = set(lag)
        self._show_progress(lag)
        if now - self._summary_at >= SUMMARY_INTERVAL_S:
            self._summary_at = now
            m = self.metrics
            log.info(
                "streamer summary consumed=%d appended=%d duplicates=%d dead_letters=%d lag=%d unsealed=%d "
                "buffer_rows=%d paused=%d broker_down=%s",
                m.value("events_consumed_total"), m.value("events_appended_total"), m.value("duplicates_total"),
                m.value("dlq_writes_total"), sum(lag.values()), self.writer.unsealed_rows,
                self.buffer_rows, m.value("paused"), self.broker_down,
            )  # fmt: skip
