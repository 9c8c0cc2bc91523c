"""A real full disk (a small tmpfs mounted for the test) at the worst moments: between a segment's rename and the
manifest write, and in the middle of a dead-letter append. Nothing is stored twice and no line is torn."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from common.schema import InvalidEvent
from streamer.dlq import FileDeadLetters
from streamer.sources.base import Record
from streamer.writer import BufferWriter
from tests.streamer.test_writer import append, synthetic

PAGE = 4096  # tmpfs allocates whole pages


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk until `leave` bytes are free (rounded down to whole pages)."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def free_bytes(disk: Path) -> int:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize


def test_a_full_disk_between_the_segment_rename_and_the_manifest_stores_nothing_twice(
    small_disk: Path, tmp_path: Path
) -> None:
    """Today's failure: the retry sealed the rows again under a new name and the next start adopted the orphan
    (2,000 rows stored twice in 16,000)."""
    probe = BufferWriter(tmp_path / "probe")  # how many pages one segment of these rows takes
    append(probe, synthetic(2000), 0)
    probe.seal()
    (segment,) = (tmp_path / "probe" / "segments").iterdir()
    pages = -(-segment.stat().st_size // PAGE)

    buf = small_disk / "buffer"
    w = BufferWriter(buf)
    append(w, synthetic(2000, first_hash=50_000), 0)
    w.seal()  # a manifest with one segment exists: the next manifest needs a page of its own
    append(w, synthetic(2000), 2000)
    filler = fill(small_disk, leave=pages * PAGE)  # room for the segment, none for the new manifest
    with pytest.raises(OSError) as e:
        w.seal()
    assert e.value.errno == errno.ENOSPC
    filler.unlink()
    w.seal()  # the retry succeeds
    assert sum(s["rows"] for s in BufferWriter(buf).dir.read_manifest().segments) == 4000  # a restart adopts no orphan
    assert len(list((buf / "segments").glob("*.rseg"))) == 2


def test_a_full_disk_mid_append_leaves_no_torn_dead_letter(small_disk: Path) -> None:
    """Today's failure: a partial append left a torn line; the next dead letter was glued onto it and lost."""
    path = small_disk / "dlq.jsonl"
    dlq = FileDeadLetters(path)
    err = InvalidEvent("not_json", "$", "not JSON")

    def letter(i: int) -> None:
        dlq.write(Record("file:x", i, i + 1, b"x" * 3000 + str(i).encode()), err)

    letter(0)
    dlq.flush()
    filler = fill(small_disk, leave=2 * PAGE)
    for i in range(1, 20):  # ~60 KB: the append runs out of room part way
        letter(i)
    with pytest.raises(OSError):
        dlq.flush()
    assert path.read_bytes().endswith(b"\n")
    filler.unlink()
    letter(20)
    assert dlq.flush() == 20  # the 19 kept from the failed append, and the new one
    lines = path.read_bytes().splitlines()
    assert sorted(orjson.loads(line)["offset"] for line in lines) == list(range(21))
    assert free_bytes(small_disk) > 0
