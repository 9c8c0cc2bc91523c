"""The file dead-letter sink: a torn tail is cut, values are capped, repeats after a crash are dropped, rotation."""

from __future__ import annotations

from pathlib import Path

import orjson

from common.schema import InvalidEvent
from streamer.dlq import FileDeadLetters
from streamer.sources import Record

ERR = InvalidEvent("not_json", "$", "not valid JSON")


def test_a_torn_last_line_is_cut_so_the_next_entry_is_not_glued_onto_it(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    d = FileDeadLetters(path)
    d.write(Record("file:a", 0, 4, b"bad"), ERR)
    d.flush()
    with open(path, "ab") as f:
        f.write(b'{"source": "file:a", "offset": 4, "rea')  # a partial append: disk full, or a crash
    d2 = FileDeadLetters(path)
    d2.write(Record("file:a", 4, 8, b"bad2"), ERR)
    d2.flush()
    lines = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [x["offset"] for x in lines] == [0, 4]


def test_repeats_after_a_restart_are_dropped_only_past_the_stored_position(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    d = FileDeadLetters(path)
    for off in (0, 10, 20):
        d.write(Record("file:a", off, off + 1, b"x"), ERR)
    d.flush()
    d2 = FileDeadLetters(path, stored_positions={"file:a": 15})  # 0 and 10 are sealed: never re-read
    assert d2._seen == {("file:a", 20)}
    d2.write(Record("file:a", 20, 21, b"x"), ERR)  # re-read after the crash: not written twice
    assert d2.pending_bytes == 0


def test_values_are_capped_and_the_file_rotates_after_a_seal(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    d = FileDeadLetters(path, max_value_bytes=1024, file_max_bytes=4096, keep_files=2)
    for i in range(30):
        d.write(Record("file:a", i * 5000, (i + 1) * 5000, b"z" * 5000), ERR)
        d.flush()
        d.sealed({"file:a": (i + 1) * 5000})
    entry = orjson.loads((tmp_path / "dlq.jsonl.1").read_bytes().splitlines()[0])
    assert entry["truncated_from_bytes"] == 5000 and len(entry["raw"]) == 1024
    names = {p.name for p in tmp_path.iterdir()}
    assert {"dlq.jsonl.1", "dlq.jsonl.2"} <= names and "dlq.jsonl.3" not in names  # keep_files=2
