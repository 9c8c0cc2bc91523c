"""Parse workers: `encode` polled batches in other processes while the main thread polls the next ones.

Why: kafka-python's poll and parsing both need the GIL. In one process the streamer ran at about half the raw
consume rate (a poll costs ~24 µs an event on the 2-core dev machine, parse + reward + features + append
another ~20 µs). A worker process takes the parse off the main thread; the main thread keeps everything
stateful — records, positions, their order, dead letters, dedup, the writer — so the durability rules do not
change: a batch is applied (appended, positions advanced) in poll order, and only sealed positions are
committed. A batch still in a worker when the process dies was never applied: a restart reads it again.

    main:   poll k ─ submit k ─ poll k+1 ─ collect k, submit k+1, apply k ─ poll k+2 ─ …
    worker:            encode k ──────────────────  encode k+1 ──────────────

With `workers=0` batches are encoded inline (same results, one process).

Workers are spawned (not forked: the main process runs kafka-python's and the metrics server's threads), ignore
SIGINT/SIGTERM (the main process decides when to stop and drains them first) and exit when their pipe closes,
which is also what happens when the main process is killed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from common.reward import RewardConfig
from streamer.encode import DEFAULT_MAX_RECORD_BYTES, EncodedBatch, encode
from streamer.sources import Record

log = logging.getLogger(__name__)


class ParseWorkerError(RuntimeError):
    """A parse worker died or failed on a batch: the daemon exits and a restart re-reads that batch."""


@dataclass
class Batch:
    """A polled batch on its way through a worker. `since` is the caller's revocation count taken before the
    poll that produced it: partitions revoked after that must not be applied from this batch."""

    records: list[Record]
    since: int = 0
    conn: Connection | None = None
    result: EncodedBatch | None = None


def _serve(conn: Connection, reward_config: RewardConfig, max_record_bytes: int) -> None:
    """A worker's loop: a list of raw values in, an `EncodedBatch` (or an error text) out, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send("ready")  # imports done: the first batch is not held up by the start
    while True:
        try:
            values = conn.recv()
        except (EOFError, OSError):
            return  # the main process closed the pipe or died
        if values is None:
            return
        try:
            reply: Any = encode(values, reward_config, max_record_bytes)
        except Exception:
            reply = traceback.format_exc()
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class ParsePool:
    """Encodes batches in order with `workers` processes (0 = inline); one batch in flight per worker."""

    START_TIMEOUT_S = 60.0

    def __init__(
        self, workers: int, reward_config: RewardConfig, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    ) -> None:
        if workers < 0:
            raise ValueError(f"streamer.parse_workers must be >= 0, got {workers}")
        self.reward_config = reward_config
        self.max_record_bytes = max_record_bytes
        self._idle: list[Connection] = []
        self._procs: list[Any] = []
        self.in_flight: deque[Batch] = deque()
        ctx = mp.get_context("spawn")
        for i in range(workers):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_serve, args=(child, reward_config, max_record_bytes), name=f"rankrl-parse-{i}", daemon=True
            )
            p.start()
            child.close()  # only the worker holds its end: the worker sees EOF when we close or die
            self._procs.append(p)
            self._idle.append(parent)
        for conn, p in zip(self._idle, self._procs, strict=True):
            try:
                started = conn.poll(self.START_TIMEOUT_S) and conn.recv() == "ready"
            except (EOFError, OSError):
                started = False
            if not started:
                self.close()
                raise ParseWorkerError(f"parse worker {p.name} did not start within {self.START_TIMEOUT_S:.0f}s")
        if workers:
            log.info("streamer parse workers=%d pids=%s", workers, [p.pid for p in self._procs])

    @property
    def workers(self) -> int:
        return len(self._procs)

    def full(self) -> bool:
        """No idle worker: the next submit must first collect the oldest batch."""
        return self.workers > 0 and not self._idle

    def submit(self, records: list[Record], since: int = 0) -> None:
        """Start encoding a batch (inline: encode it now). Call only when not `full()`."""
        batch = Batch(records, since)
        if self.workers == 0:
            batch.result = encode([r.value for r in records], self.reward_config, self.max_record_bytes)
        else:
            batch.conn = self._idle.pop()
            try:
                batch.conn.send([r.value for r in records])
            except (BrokenPipeError, OSError) as e:
                raise ParseWorkerError(f"parse worker gone while sending a batch: {e}") from None
        self.in_flight.append(batch)

    def ready(self) -> bool:
        """The oldest batch in flight is encoded: `collect` will not wait."""
        b = self.in_flight[0]
        return b.result is not None or (b.conn is not None and b.conn.poll(0))

    def collect(self) -> Batch:
        """The oldest batch in flight with its result (waits for its worker)."""
        batch = self.in_flight[0]
        if batch.result is None:
            assert batch.conn is not None
            try:
                reply = batch.conn.recv()
            except (EOFError, OSError) as e:
                raise ParseWorkerError(f"parse worker exited with a batch in flight: {e!r}") from None
            if isinstance(reply, str):
                raise ParseWorkerError(f"parse worker failed on a batch:\n{reply}")
            batch.result = reply
            self._idle.append(batch.conn)
        self.in_flight.popleft()
        return batch

    def close(self) -> None:
        for conn in self._idle:
            with contextlib.suppress(OSError):
                conn.send(None)
        for b in self.in_flight:
            if b.conn is not None:
                b.conn.close()
        for conn in self._idle:
            conn.close()
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self._procs, self._idle = [], []
        self.in_flight.clear()
