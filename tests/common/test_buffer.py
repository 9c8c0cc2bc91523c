"""The on-disk buffer: atomic segments, memory-mapped windows, crash repair, retention."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.buffer import BufferDir, BufferFormatError, open_buffer, read_segment_header, write_segment
from common.schema import parse_event
from rankrl.sim import RankingWorld, simulate
from streamer.writer import BufferWriter, log_id_hash

T0 = 1.7e9  # event times in the past: validation refuses times before 2000 or ahead of the clock


def events(n: int, seed: int = 0, start: float = T0) -> list:
    _, _, _, evs = next(simulate(RankingWorld(), n, seed=seed, start_time=start, interval_s=1.0))
    return [parse_event(orjson.dumps(e)) for e in evs]


def fill(w: BufferWriter, evs: list, key: str = "kafka:t:0", first_offset: int = 0) -> None:
    for i, ev in enumerate(evs):
        w.append(key, first_offset + i, first_offset + i + 1, ev, reward=1.0)


def test_roundtrip_is_memory_mapped(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path)
    evs = events(300)
    fill(w, evs)
    assert w.seal() == {"kafka:t:0": 300}
    win = open_buffer(tmp_path).load()
    assert win.rows == 300
    cols, mask = win.parts[0]
    assert isinstance(cols["state"], np.memmap) and mask is None
    assert win.column("action").shape == (300, 7)
    np.testing.assert_allclose(win.column("action").sum(axis=1), 1.0, rtol=1e-5)
    assert set(win.column("log_id_hash").tolist()) == {log_id_hash(e.log_id) for e in evs}
    assert win.column("converted").sum() == sum(e.converted for e in evs)
    assert open_buffer(tmp_path).manifest().positions == {"kafka:t:0": 300}


def test_time_window(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path)
    fill(w, events(100, start=T0 + 1000.0))  # event times T0 + 1000 .. 1099
    w.seal()
    fill(w, events(100, seed=1, start=T0 + 2000.0), first_offset=100)
    w.seal()
    b = open_buffer(tmp_path)
    assert b.load(start=T0 + 1050.0, end=T0 + 2010.0).rows == 50 + 10
    assert b.load(window=500.0, end=T0 + 2100.0).rows == 100
    assert len(b.load(start=T0 + 2000.0).segments) == 1


def test_duplicates_by_log_id_are_dropped_across_restarts(tmp_path: Path) -> None:
    evs = events(50)
    w = BufferWriter(tmp_path)
    fill(w, evs)
    assert not w.append("kafka:t:0", 50, 51, evs[3], 1.0)  # the same search sent twice
    w.seal()
    w2 = BufferWriter(tmp_path)  # a restart reloads recent log ids from the sealed segments
    assert not w2.append("kafka:t:1", 0, 1, evs[7], 1.0)
    assert w2.seal() == {"kafka:t:1": 1}  # the position still advances
    assert open_buffer(tmp_path).load().rows == 50


def test_seal_never_stores_below_another_owners_position(tmp_path: Path) -> None:
    evs = events(20)
    a, b = BufferWriter(tmp_path), BufferWriter(tmp_path)
    fill(a, evs[:10])
    fill(b, evs[:10])  # b re-read the same offsets after a rebalance raced a's seal
    a.seal()
    b.seal()
    assert open_buffer(tmp_path).load().rows == 10


def test_drop_revoked_partitions(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path)
    evs = events(30)
    fill(w, evs[:10], key="kafka:t:0")
    fill(w, evs[10:], key="kafka:t:1")
    assert w.drop({"kafka:t:0"}) == 10
    assert w.seal() == {"kafka:t:1": 20}
    assert open_buffer(tmp_path).load().rows == 20


def test_orphan_segment_is_adopted_and_temporaries_removed(tmp_path: Path) -> None:
    """Crash after a segment's rename but before the manifest: the next open adopts it."""
    w = BufferWriter(tmp_path)
    fill(w, events(40))
    w.seal()
    d = BufferDir(tmp_path)
    src = next(d.segments_dir.glob("*.rseg"))
    h = read_segment_header(src)
    from common.buffer import map_segment

    cols = {k: np.asarray(v) for k, v in map_segment(src).items()}
    orphan = d.segments_dir / "seg-orphan.rseg"
    write_segment(
        orphan,
        cols,
        {k: h[k] for k in ("min_time", "max_time", "sources")}
        | {"sealed_at": time.time(), "positions": {"kafka:t:9": 77}},
    )
    (d.segments_dir / ".seg-torn.rseg.tmp").write_bytes(b"partial")
    with d.locked():
        m = d.recover()
    assert {s["name"] for s in m.segments} >= {"seg-orphan.rseg"}
    assert m.positions["kafka:t:9"] == 77
    assert not list(d.segments_dir.glob(".*.tmp"))
    assert open_buffer(tmp_path).load().rows == 80


def test_retention_by_size_and_age(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path, retention_max_bytes=10**9)
    for k in range(4):
        fill(w, events(50, seed=k), first_offset=50 * k)
        w.seal()
    sizes = [s["bytes"] for s in open_buffer(tmp_path).manifest().segments]
    w.retention_max_bytes = sum(sizes[-2:])
    fill(w, events(1, seed=9), first_offset=200)
    w.seal()
    m = open_buffer(tmp_path).manifest()
    assert len(m.segments) == 2  # oldest dropped beyond the size limit, whole segments only
    assert len(list(BufferDir(tmp_path).segments_dir.glob("*.rseg"))) == 2
    w.retention_max_age_s = -1.0
    w.advance("kafka:t:0", 202)
    w.seal()
    assert open_buffer(tmp_path).manifest().segments == []


def test_not_a_buffer(tmp_path: Path) -> None:
    with pytest.raises(BufferFormatError, match="not a rankrl buffer"):
        open_buffer(tmp_path / "nothing").load()
