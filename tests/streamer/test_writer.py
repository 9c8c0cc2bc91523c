"""The buffer writer's dedup index: exact across seals and restarts, and 16 bytes a search instead of ~117."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.buffer import COLUMNS
from streamer.writer import BufferWriter


def synthetic(n: int, first_hash: int = 1, t0: float = 1.7e9) -> dict[str, np.ndarray]:
    cols = {name: np.zeros((n, *shape), dtype=dtype) for name, (dtype, shape) in COLUMNS.items()}
    cols["action"][:] = 1 / 7
    cols["log_id_hash"][:] = np.arange(first_hash, first_hash + n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    cols["event_time"][:] = t0 + np.arange(n) * 0.01
    return {k: v for k, v in cols.items() if k not in ("partition", "offset")}


def append(w: BufferWriter, cols: dict[str, np.ndarray], first_offset: int) -> int:
    n = len(cols["reward"])
    offsets = list(range(first_offset, first_offset + n))
    return w.append_columns(["file:x"] * n, offsets, [o + 1 for o in offsets], cols)


def test_dedup_is_exact_across_seals_and_restarts(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path, dedup_window_s=3600.0)
    assert append(w, synthetic(1000), 0) == 1000
    w.seal()
    again = synthetic(1500)  # 1,000 already sealed, 500 new
    assert append(w, again, 1000) == 500
    assert append(w, synthetic(10, first_hash=2000), 2500) == 10
    assert append(w, synthetic(10, first_hash=2000), 2510) == 0  # seen in the open segment
    w.seal()
    restarted = BufferWriter(tmp_path, dedup_window_s=3600.0)  # the index is rebuilt from the sealed segments
    assert append(restarted, synthetic(2100), 3000) == 2100 - 1510
    assert append(restarted, synthetic(5, first_hash=10_000), 5100) == 5


def test_dedup_index_costs_16_bytes_a_search(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path, max_rows=300_000, dedup_window_s=1e9)
    n = 250_000
    for k in range(4):
        append(w, synthetic(n, first_hash=1 + k * n), k * n)
        w.seal()
    assert w.dedup_index_bytes == 16 * 4 * n  # a dict of a million hashes to times held ~117 MB


def test_sealed_hashes_older_than_the_window_are_forgotten(tmp_path: Path) -> None:
    w = BufferWriter(tmp_path, dedup_window_s=100.0)
    append(w, synthetic(100, t0=1.7e9), 0)
    w.seal()
    append(w, synthetic(100, first_hash=500, t0=1.7e9 + 1000.0), 100)
    w.seal()
    assert w.dedup_index_bytes == 16 * 100
    assert append(w, synthetic(100), 200) == 100  # outside the window: no longer a duplicate
