"""The replay buffer on disk: immutable sealed segments, a manifest, and the memory-mapped reader.

    buffer/
      manifest.json            format version, sealed segments (rows, time range, bytes, offset ranges),
                               and per source partition the next position to read ("kafka:topic:3" -> 1234)
      manifest.lock            flock: one manifest writer at a time (several streamers may share a buffer)
      segments/seg-….rseg      one sealed segment: a JSON header, then each column contiguous (64-byte aligned)

    segment lifecycle:   rows in memory ──seal──► .tmp written, fsynced ──rename──► sealed (in manifest)
                                                                                        │ retention
                                                                                        ▼
                                                                                    evicted (manifest first,
                                                                                    then the file)

Every durable write is atomic: temporary name, fsync, rename, fsync of the directory. A segment's header
carries its own offset ranges, so a crash between a segment's rename and the manifest update is repaired on
open (the orphan segment is adopted). The reader lists segments from one manifest snapshot and memory-maps
their columns; it never sees a partial segment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.durable import atomic_write_bytes, file_lock, fsync_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"RANKRLS1"
ALIGN = 64
SEGMENT_SUFFIX = ".rseg"

# name -> (dtype, trailing shape)
COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "state": ("<f4", (23,)),
    "action": ("<f4", (7,)),
    "reward": ("<f4", ()),
    "converted": ("u1", ()),
    "revenue": ("<f4", ()),
    "first_purchase_rank": ("<i2", ()),  # 1-based; 0 = no purchase
    "log_propensity": ("<f8", ()),  # NaN when the event carried no logging density
    "event_time": ("<f8", ()),  # seconds since the epoch
    "partition": ("<i4", ()),  # index into the header's "sources" list
    "offset": ("<i8", ()),  # Kafka offset, or byte offset of the line for the file source
    "log_id_hash": ("<u8", ()),
}


class BufferFormatError(RuntimeError):
    """A buffer directory that cannot be read or written as expected."""


def _pad(n: int) -> int:
    return (ALIGN - n % ALIGN) % ALIGN


def write_segment(path: Path, columns: Mapping[str, np.ndarray], meta: dict[str, Any]) -> int:
    """Write one sealed segment atomically; returns its size in bytes."""
    n = len(columns["reward"])
    layout, blocks = [], []
    offset = 0
    for name, (dtype, shape) in COLUMNS.items():
        arr = np.ascontiguousarray(columns[name], dtype=dtype)
        if arr.shape != (n, *shape):
            raise BufferFormatError(f"segment column {name}: shape {arr.shape}, expected {(n, *shape)}")
        raw = arr.tobytes()
        layout.append({"name": name, "dtype": dtype, "shape": [n, *shape], "offset": offset})
        blocks.append(raw + b"\0" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    header = json.dumps({"format_version": FORMAT_VERSION, "rows": n, "columns": layout, **meta}).encode()
    head_len = 16 + len(header)
    header += b" " * _pad(head_len)
    data_start = 16 + len(header)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + data_start.to_bytes(8, "little") + header)
        for b in blocks:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return data_start + offset


def read_segment_header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:8] != MAGIC:
            raise BufferFormatError(f"{path}: not a rankrl segment")
        data_start = int.from_bytes(head[8:16], "little")
        header: dict[str, Any] = json.loads(f.read(data_start - 16))
    if header.get("format_version") != FORMAT_VERSION:
        raise BufferFormatError(
            f"{path}: segment format {header.get('format_version')}, this rankrl reads {FORMAT_VERSION}"
        )
    header["data_start"] = data_start
    return header


def map_segment(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every column of a sealed segment (read-only; nothing is copied)."""
    h = read_segment_header(path)
    out = {}
    for c in h["columns"]:
        if h["rows"] == 0:
            out[c["name"]] = np.empty(c["shape"], dtype=c["dtype"])
            continue
        out[c["name"]] = np.memmap(
            path, dtype=c["dtype"], mode="r", offset=h["data_start"] + c["offset"], shape=tuple(c["shape"])
        )
    return out


# ------------------------------------------------------------------------------------------------ manifest
@dataclass
class Manifest:
    """What is sealed, and where each source partition resumes."""

    segments: list[dict[str, Any]] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)  # source partition key -> next position to read
    # What the positions are positions in: "kafka:<topic>" -> {"topic_id", "cluster_id"} (a recreated topic or
    # another cluster has other ids, and its offsets mean other records); {"reset": reason} after
    # `rankrl reset-positions`, until the streamer records the new identity.
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(
            {"format_version": self.format_version, "segments": self.segments, "positions": self.positions,
             "sources": self.sources},
            indent=1,
        ).encode()  # fmt: skip

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        d = json.loads(data)
        if d.get("format_version") != FORMAT_VERSION:
            raise BufferFormatError(f"manifest format {d.get('format_version')}, this rankrl reads {FORMAT_VERSION}")
        positions = {k: int(v) for k, v in d["positions"].items()}
        return cls(segments=d["segments"], positions=positions, sources=dict(d.get("sources", {})))


class BufferDir:
    """Paths and manifest access of one buffer directory (shared by the writer and the reader)."""

    def __init__(self, path: str | Path, create: bool = False) -> None:
        self.path = Path(path)
        self.segments_dir = self.path / "segments"
        self.manifest_path = self.path / "manifest.json"
        self.lock_path = self.path / "manifest.lock"
        if create:
            self.segments_dir.mkdir(parents=True, exist_ok=True)
        elif not self.manifest_path.exists() and not self.segments_dir.exists():
            raise BufferFormatError(f"{self.path} is not a rankrl buffer (no manifest.json): has the streamer run?")

    def locked(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.lock_path)

    def read_manifest(self) -> Manifest:
        try:
            return Manifest.from_json(self.manifest_path.read_bytes())
        except FileNotFoundError:
            return Manifest()

    def write_manifest(self, m: Manifest) -> None:
        atomic_write_bytes(self.manifest_path, m.to_json())

    def recover(self) -> Manifest:
        """Under the lock: drop temporary files, adopt sealed segments the manifest missed (a crash after the
        rename). A segment whose positions the manifest has already passed was sealed again after its manifest
        write failed (its rows are stored under another name): it is removed, not adopted."""
        m = self.read_manifest()
        listed = {s["name"] for s in m.segments}
        changed = False
        for p in sorted(self.segments_dir.glob(".*.tmp")):
            p.unlink(missing_ok=True)
        for p in sorted(self.segments_dir.glob(f"*{SEGMENT_SUFFIX}")):
            if p.name in listed:
                continue
            h = read_segment_header(p)
            ahead = [k for k, nxt in h.get("positions", {}).items() if int(nxt) > m.positions.get(k, 0)]
            if not ahead:
                log.warning("buffer %s: removing %s, whose rows were sealed again after a failed seal", self.path, p)
                p.unlink()
                continue
            m.segments.append(segment_entry(p, h))
            for key, nxt in h.get("positions", {}).items():
                m.positions[key] = max(m.positions.get(key, 0), int(nxt))
            changed = True
        if changed:
            m.segments.sort(key=lambda s: s["sealed_at"])
            self.write_manifest(m)
        return m


def segment_entry(path: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": path.name,
        "rows": header["rows"],
        "bytes": path.stat().st_size,
        "min_time": header["min_time"],
        "max_time": header["max_time"],
        "sealed_at": header["sealed_at"],
        "sources": header["sources"],
        "positions": header["positions"],
    }


# ------------------------------------------------------------------------------------------------ reader
@dataclass
class ReplayWindow:
    """The sealed rows of a time window: per-segment memory maps plus the row selection in each."""

    parts: list[tuple[dict[str, np.ndarray], np.ndarray | None]]  # (columns, row mask or None for all)
    segments: list[str]
    # The source positions of the manifest that listed these segments: what the rows were read up to (a segment
    # sealed after the load is behind newer positions, not these).
    positions: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(len(c["reward"]) if m is None else int(m.sum()) for c, m in self.parts)

    def column(self, name: str) -> np.ndarray:
        """One column of the window as a contiguous array (copies the window's rows only)."""
        chunks = [c[name] if m is None else c[name][m] for c, m in self.parts]
        if not chunks:
            dtype, shape = COLUMNS[name]
            return np.empty((0, *shape), dtype=dtype)
        return np.concatenate(chunks)

    def columns(self, *names: str) -> dict[str, np.ndarray]:
        return {n: self.column(n) for n in (names or tuple(COLUMNS))}


class ReplayBuffer:
    """Read side of a buffer directory: `open_buffer(path).load(window=3600)`."""

    def __init__(self, path: str | Path) -> None:
        self.dir = BufferDir(path)

    def manifest(self) -> Manifest:
        return self.dir.read_manifest()

    def load(
        self, window: float | None = None, start: float | None = None, end: float | None = None, retries: int = 3
    ) -> ReplayWindow:
        """Memory-mapped sealed rows with event_time in [start, end), or in the last `window` seconds."""
        if window is not None:
            start = (time.time() if end is None else end) - window
        for attempt in range(retries):
            m = self.dir.read_manifest()
            try:
                return self._load(m, start, end)
            except FileNotFoundError:
                # retention removed a listed segment between our manifest read and the map: read again
                if attempt == retries - 1:
                    raise
        raise AssertionError("unreachable")

    def _load(self, m: Manifest, start: float | None, end: float | None) -> ReplayWindow:
        parts: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
        names = []
        for s in m.segments:
            if s["rows"] == 0:
                continue
            if start is not None and s["max_time"] < start:
                continue
            if end is not None and s["min_time"] >= end:
                continue
            cols = map_segment(self.dir.segments_dir / s["name"])
            t = cols["event_time"]
            mask = None
            if (start is not None and s["min_time"] < start) or (end is not None and s["max_time"] >= end):
                mask = np.ones(len(t), dtype=bool)
                if start is not None:
                    mask &= t >= start
                if end is not None:
                    mask &= t < end
            parts.append((cols, mask))
            names.append(s["name"])
        return ReplayWindow(parts=parts, segments=names, positions=dict(m.positions))

    def stats(self) -> dict[str, Any]:
        m = self.dir.read_manifest()
        return {
            "segments": len(m.segments),
            "rows": sum(s["rows"] for s in m.segments),
            "bytes": sum(s["bytes"] for s in m.segments),
            "newest_event_time": max((s["max_time"] for s in m.segments if s["rows"]), default=None),
            "oldest_event_time": min((s["min_time"] for s in m.segments if s["rows"]), default=None),
            "positions": m.positions,
        }


def open_buffer(path: str | Path) -> ReplayBuffer:
    return ReplayBuffer(path)
