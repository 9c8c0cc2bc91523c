"""The buffer writer: rows in memory until a seal makes them durable, then retention.

A seal writes one segment holding every unsealed row (of every partition this process owns), then the
manifest with each partition's next position, under the buffer's lock. Positions also advance for records
that were not stored (dead letters, duplicates): a seal with no rows still records them. Only after a seal
does the streamer commit to Kafka.

Duplicates are dropped twice over: by position (a partition's rows below its stored next position are never
written again) and by log-id hash within `dedup_window_s` of event time (the same search sent twice).

The dedup index costs 16 bytes a search: sealed rows' hashes live in a sorted uint64 array beside their event
times (a batch is looked up with one `searchsorted`), only the open segment's in a dict. A Python dict of every
hash in the window cost ~117 MB per million searches; this costs 16 MB (`tests/streamer/test_writer.py`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.buffer import COLUMNS, BufferDir, Manifest, map_segment, segment_entry, write_segment
from common.config import StreamerConfig
from common.schema import SearchLogEvent
from streamer.encode import EVENT_COLUMNS, event_columns, log_id_hash

__all__ = ["BufferWriter", "log_id_hash"]

log = logging.getLogger(__name__)


class BufferWriter:
    """Appends parsed events, seals them into segments, applies retention. Not thread-safe: one owner."""

    def __init__(
        self,
        path: str | Path,
        max_rows: int = StreamerConfig.segment_max_rows,
        max_age_s: float = StreamerConfig.segment_max_age_s,
        retention_max_age_s: float = StreamerConfig.retention_max_age_s,
        retention_max_bytes: int = StreamerConfig.retention_max_bytes,
        dedup_window_s: float = StreamerConfig.dedup_window_s,
    ) -> None:
        self.dir = BufferDir(path, create=True)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.retention_max_age_s = retention_max_age_s
        self.retention_max_bytes = retention_max_bytes
        self.dedup_window_s = dedup_window_s
        self.writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        with self.dir.locked():
            manifest = self.dir.recover()
        self._cap = 0
        self._cols: dict[str, np.ndarray] = {}
        self._grow(min(max_rows, 4096))
        self._n = 0
        self._keys: list[str] = []  # partition index -> source partition key, for this open segment
        self._key_index: dict[str, int] = {}
        self._pending: dict[str, int] = {}  # key -> next position processed but not yet sealed
        self._opened_at: float | None = None
        # Dedup index: sealed rows (sorted hashes, their event times) and the open segment's rows.
        self._sealed_hashes = np.empty(0, dtype=np.uint64)
        self._sealed_times = np.empty(0, dtype=np.float64)
        # event time of the newest row this writer knows stored: nothing newer can be found by stored_time()
        self.newest_stored_time = float("-inf")
        self._open_hashes: dict[int, float] = {}
        self._load_recent(manifest)
        self.segments_sealed = 0
        self.evicted_segments = 0

    # ------------------------------------------------------------------------------------------ state
    def _grow(self, cap: int) -> None:
        new = {name: np.empty((cap, *shape), dtype=dtype) for name, (dtype, shape) in COLUMNS.items()}
        for name, arr in self._cols.items():
            new[name][: self._cap] = arr[: self._cap]
        self._cols, self._cap = new, cap

    def _load_recent(self, m: Manifest) -> None:
        newest = max((s["max_time"] for s in m.segments if s["rows"]), default=None)
        if newest is None:
            return
        horizon = newest - self.dedup_window_s
        hashes, times = [], []
        for s in m.segments:
            if s["rows"] and s["max_time"] >= horizon:
                cols = map_segment(self.dir.segments_dir / s["name"])
                keep = cols["event_time"] >= horizon
                hashes.append(np.asarray(cols["log_id_hash"][keep]))
                times.append(np.asarray(cols["event_time"][keep]))
        if hashes:
            self._merge_sealed(np.concatenate(hashes), np.concatenate(times))

    def _merge_sealed(self, hashes: np.ndarray, times: np.ndarray) -> None:
        """Insert newly sealed hashes into the sorted index: sort only the new ones and merge (linear in the index,
        which runs on the main thread at every seal: 183 ms against 491 for re-sorting 3.6M ids)."""
        order = np.argsort(hashes, kind="stable")
        new_h = np.asarray(hashes, dtype=np.uint64)[order]
        new_t = np.asarray(times, dtype=np.float64)[order]
        at = np.searchsorted(self._sealed_hashes, new_h)
        self._sealed_hashes = np.insert(self._sealed_hashes, at, new_h)
        self._sealed_times = np.insert(self._sealed_times, at, new_t)
        if len(new_t):
            self.newest_stored_time = max(self.newest_stored_time, float(new_t.max()))

    def _in_sealed(self, hashes: np.ndarray) -> np.ndarray:
        sh = self._sealed_hashes
        if not len(sh):
            return np.zeros(len(hashes), dtype=bool)
        i = np.minimum(np.searchsorted(sh, hashes), len(sh) - 1)
        return np.asarray(sh[i] == hashes)

    def stored_time(self, log_id_hash: int) -> float | None:
        """The event time of the row stored under this log-id hash within the dedup window, or None."""
        t = self._open_hashes.get(log_id_hash)
        if t is not None:
            return t
        sh = self._sealed_hashes
        i = int(np.searchsorted(sh, np.uint64(log_id_hash)))
        return float(self._sealed_times[i]) if i < len(sh) and int(sh[i]) == log_id_hash else None

    @property
    def dedup_index_bytes(self) -> int:
        """Memory held by the dedup index (the dict of the open segment estimated at ~100 bytes an entry)."""
        return int(self._sealed_hashes.nbytes + self._sealed_times.nbytes + 100 * len(self._open_hashes))

    @property
    def unsealed_rows(self) -> int:
        return self._n

    def stored_positions(self) -> dict[str, int]:
        """Next positions recorded in the manifest (re-read: another process may own a partition now)."""
        with self.dir.locked():
            return dict(self.dir.read_manifest().positions)

    # ------------------------------------------------------------------------------------------ append
    def source_identity(self, source: str) -> dict[str, Any] | None:
        """What the manifest says `source` ("kafka:<topic>") is: its ids, a pending reset, or None (never seen)."""
        with self.dir.locked():
            return self.dir.read_manifest().sources.get(source)

    def record_source_identity(self, source: str, identity: dict[str, Any]) -> None:
        """Store what `source` is now, durably, before any position in it is stored."""
        with self.dir.locked():
            m = self.dir.read_manifest()
            m.sources[source] = identity
            self.dir.write_manifest(m)

    def advance(self, key: str, next_position: int) -> None:
        """Mark a record as processed without storing a row (a dead letter or a duplicate)."""
        if next_position > self._pending.get(key, -1):
            self._pending[key] = next_position
        if self._opened_at is None:
            self._opened_at = time.monotonic()

    def append(self, key: str, offset: int, next_position: int, ev: SearchLogEvent, reward: float) -> bool:
        """Store one validated event; False (and nothing stored) when its log id was seen in the window."""
        return self.append_batch([(key, offset, next_position, ev, reward)]) == 1

    def append_batch(self, rows: Sequence[tuple[str, int, int, SearchLogEvent, float]]) -> int:
        """Store validated events (key, offset, next position, event, reward); returns how many were new."""
        cols = event_columns([r[3] for r in rows], [r[4] for r in rows])
        return self.append_columns([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], cols)

    def append_columns(
        self, keys: Sequence[str], offsets: Sequence[int], next_positions: Sequence[int], cols: dict[str, np.ndarray]
    ) -> int:
        """Store encoded rows (`streamer.encode`), row i from source `keys[i]` at `offsets[i]`; returns how many
        were new. Rows whose log id was seen within the dedup window (or earlier in these rows) only advance
        their partition's position."""
        recent = self._open_hashes
        hash_col = np.asarray(cols["log_id_hash"], dtype=np.uint64)
        sealed = self._in_sealed(hash_col).tolist()
        hashes = hash_col.tolist()
        times = cols["event_time"].tolist()
        fresh = []
        for i, (h, t) in enumerate(zip(hashes, times, strict=True)):
            if sealed[i] or h in recent:
                continue
            recent[h] = t
            fresh.append(i)
        m = len(fresh)
        if m:
            self.newest_stored_time = max(self.newest_stored_time, max(times[i] for i in fresh))
            while self._n + m > self._cap:
                self._grow(self._cap * 2)
            lo, hi = self._n, self._n + m
            take = slice(None) if m == len(hashes) else np.array(fresh)
            for name in EVENT_COLUMNS:
                self._cols[name][lo:hi] = cols[name][take]
            self._cols["partition"][lo:hi] = [self._partition_index(keys[i]) for i in fresh]
            self._cols["offset"][lo:hi] = [offsets[i] for i in fresh]
            self._n = hi
        for key, nxt in zip(keys, next_positions, strict=True):
            self.advance(key, nxt)
        return m

    def _partition_index(self, key: str) -> int:
        idx = self._key_index.get(key)
        if idx is None:
            idx = self._key_index[key] = len(self._keys)
            self._keys.append(key)
        return idx

    def drop(self, keys: set[str]) -> int:
        """Forget unsealed rows and positions of partitions this process no longer owns; returns rows dropped."""
        drop_idx = [self._key_index[k] for k in keys if k in self._key_index]
        for k in keys:
            self._pending.pop(k, None)
        if not drop_idx or self._n == 0:
            return 0
        keep = ~np.isin(self._cols["partition"][: self._n], drop_idx)
        dropped = int(self._n - keep.sum())
        for h in self._cols["log_id_hash"][: self._n][~keep].tolist():
            self._open_hashes.pop(h, None)
        for name in COLUMNS:
            self._cols[name][: int(keep.sum())] = self._cols[name][: self._n][keep]
        self._n = int(keep.sum())
        return dropped

    def should_seal(self) -> bool:
        if self._n >= self.max_rows:
            return True
        return self._opened_at is not None and time.monotonic() - self._opened_at >= self.max_age_s

    # ------------------------------------------------------------------------------------------ seal
    def seal(self) -> dict[str, int]:
        """Make every unsealed row and position durable; returns the positions sealed (key -> next position).

        On an OSError nothing is lost: the rows stay in memory and the caller retries later.
        """
        if self._n == 0 and not self._pending:
            return {}
        n = self._n
        positions = dict(self._pending)
        with self.dir.locked():
            m = self.dir.read_manifest()
            # Never store a row another owner already stored (a rebalance raced our seal): position floor.
            for k, idx in self._key_index.items():
                floor = m.positions.get(k)
                if floor is None or not n:
                    continue
                stale = (self._cols["partition"][:n] == idx) & (self._cols["offset"][:n] < floor)
                if stale.any():
                    log.warning("buffer dropping %d rows of %s below stored position %d", int(stale.sum()), k, floor)
                    self._n = n = self._compact(~stale)
            if n:
                name = f"seg-{time.time_ns()}-{self.writer_id}.rseg"
                path = self.dir.segments_dir / name
                cols = {k: v[:n] for k, v in self._cols.items()}
                t = cols["event_time"]
                meta = {
                    "min_time": float(t.min()),
                    "max_time": float(t.max()),
                    "sealed_at": time.time(),
                    "sources": list(self._keys),
                    "positions": positions,
                    "writer": self.writer_id,
                }
                write_segment(path, cols, meta)
                m.segments.append(segment_entry(path, {**meta, "rows": n}))
            for k, nxt in positions.items():
                m.positions[k] = max(m.positions.get(k, 0), nxt)
            evicted = self._retention(m)
            try:
                self.dir.write_manifest(m)
            except BaseException:
                # The rows stay in memory for the retry, which seals them under a new name: the segment the
                # manifest never listed must not stay behind for the next start to adopt (rows stored twice).
                if n:
                    path.unlink(missing_ok=True)
                raise
            for name in evicted:
                (self.dir.segments_dir / name).unlink(missing_ok=True)
        self.segments_sealed += 1 if n else 0
        self.evicted_segments += len(evicted)
        if n:
            self._merge_sealed(self._cols["log_id_hash"][:n], self._cols["event_time"][:n])
        self._open_hashes = {}
        self._n = 0
        self._keys, self._key_index = [], {}
        self._pending = {}
        self._opened_at = None
        self._prune_recent()
        return positions

    def _compact(self, keep: np.ndarray) -> int:
        k = int(keep.sum())
        for name in COLUMNS:
            self._cols[name][:k] = self._cols[name][: self._n][keep]
        return k

    def _retention(self, m: Manifest) -> list[str]:
        """Segments to evict: sealed longer ago than the age limit, then the oldest beyond the size limit."""
        now = time.time()
        evicted = [s["name"] for s in m.segments if now - s["sealed_at"] > self.retention_max_age_s]
        kept = [s for s in m.segments if s["name"] not in evicted]
        total = sum(s["bytes"] for s in kept)
        while kept and total > self.retention_max_bytes:
            s = kept.pop(0)
            total -= s["bytes"]
            evicted.append(s["name"])
        m.segments = kept
        return evicted

    def _prune_recent(self) -> None:
        """Forget sealed hashes older than the dedup window behind the newest event time. Validation caps event
        times at the clock plus `MAX_FUTURE_S`, so one future-dated event cannot push the horizon past the data."""
        if not len(self._sealed_times):
            return
        horizon = float(self._sealed_times.max()) - self.dedup_window_s
        keep = self._sealed_times >= horizon
        if not keep.all():
            self._sealed_hashes, self._sealed_times = self._sealed_hashes[keep], self._sealed_times[keep]
