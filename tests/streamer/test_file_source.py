"""The file source end to end: SIGKILL at random moments loses and repeats nothing; tail -F; disk errors."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from common.buffer import open_buffer
from common.config import RankrlConfig, load_config
from rankrl.sim import RankingWorld, simulate, write_jsonl
from streamer.daemon import build_streamer
from streamer.writer import log_id_hash


def stream_cmd(src: Path, buf: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rankrl",
        "stream",
        "--source",
        f"file://{src}",
        "--buffer",
        str(buf),
        "--metrics-port",
        "0",
        "--set",
        "streamer.segment_max_rows=500",
        "--set",
        "streamer.segment_max_age_s=0.3",
        *extra,
    ]


def stored_hashes(buf: Path) -> list[int]:
    return open_buffer(buf).load().column("log_id_hash").tolist()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Lines arrive at ~2,500/s while the streamer is SIGKILLed 4 times at random moments, then restarted."""
    src, buf = tmp_path / "events.jsonl", tmp_path / "buffer"
    lines = [orjson.dumps(e) + b"\n" for _, _, _, evs in simulate(RankingWorld(), 20_000, seed=4) for e in evs]
    src.write_bytes(b"")

    def produce() -> None:
        with open(src, "ab") as f:
            for i in range(0, len(lines), 50):
                f.write(b"".join(lines[i : i + 50]))
                f.flush()
                time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    rng = random.Random(0)
    rows_at_kill = []
    for _ in range(4):
        p = subprocess.Popen(stream_cmd(src, buf), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 4.0))  # python, imports and the parse worker take ~2 s; then mid-stream
        p.send_signal(signal.SIGKILL)
        p.wait()
        rows_at_kill.append(open_buffer(buf).stats()["rows"] if (buf / "manifest.json").exists() else 0)
    producer.join()
    r = subprocess.run(stream_cmd(src, buf, "--stop-when-idle", "2"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    want = {log_id_hash(orjson.loads(line)["log_id"]) for line in lines}
    got = stored_hashes(buf)
    assert sum(r < len(lines) for r in rows_at_kill) >= 2, f"the kills did not land mid-stream: {rows_at_kill}"
    assert len(got) == len(set(got)), "a row was stored twice"
    assert set(got) == want, f"lost {len(want - set(got))}"
    print(f"kills=4 rows_at_kill={rows_at_kill} events={len(lines)} stored={len(got)} lost=0 duplicated=0")


def _config(src: Path, buf: Path, **streamer: object) -> RankrlConfig:
    cli = {
        "streamer": {"source": f"file://{src}", "metrics_port": 0, "segment_max_age_s": 0.2, **streamer},
        "paths": {"buffer_dir": str(buf)},
    }
    cfg: RankrlConfig = load_config(environ={}, cli=cli)
    return cfg


def wait_for(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_follows_appended_lines_and_a_folder(tmp_path: Path) -> None:
    folder, buf = tmp_path / "in", tmp_path / "buffer"
    folder.mkdir()
    world = RankingWorld()
    write_jsonl(world, str(folder / "a.jsonl"), 300, seed=1)
    reg = CollectorRegistry()
    s = build_streamer(_config(folder, buf), reg)
    t = threading.Thread(target=s.run)
    t.start()
    try:
        wait_for(lambda: reg.get_sample_value("rankrl_streamer_events_appended_total") == 300)
        # a torn line (no newline yet) is not consumed until it is complete
        line = orjson.dumps(next(simulate(world, 1, seed=9))[3][0])
        with open(folder / "a.jsonl", "ab") as f:
            f.write(line[:100])
            f.flush()
            time.sleep(1.0)
            assert reg.get_sample_value("rankrl_streamer_events_appended_total") == 300
            f.write(line[100:] + b"\n")
        write_jsonl(world, str(folder / "b.jsonl"), 200, seed=2)  # a new file in the folder
        wait_for(lambda: reg.get_sample_value("rankrl_streamer_events_appended_total") == 501)
    finally:
        s.stop()
        t.join(30)
    assert open_buffer(buf).load().rows == 501


def test_unwritable_buffer_pauses_without_committing_and_recovers(tmp_path: Path) -> None:
    src, buf = tmp_path / "events.jsonl", tmp_path / "buffer"
    world = RankingWorld()
    write_jsonl(world, str(src), 500, seed=1)
    reg = CollectorRegistry()
    s = build_streamer(_config(src, buf, max_retry_s=600.0), reg)
    t = threading.Thread(target=s.run)
    t.start()
    seg = buf / "segments"
    try:
        wait_for(lambda: open_buffer(buf).stats()["rows"] == 500)
        position = open_buffer(buf).manifest().positions
        # The segments folder becomes a plain file: every seal fails with a real OSError (root ignores chmod).
        shutil.move(seg, tmp_path / "segments.saved")
        seg.write_bytes(b"")
        with open(src, "ab") as f:
            for e in next(simulate(world, 300, seed=2))[3]:
                f.write(orjson.dumps(e) + b"\n")
        wait_for(lambda: reg.get_sample_value("rankrl_streamer_errors_total", {"kind": "disk"}) >= 2)
        assert reg.get_sample_value("rankrl_streamer_paused") == 1
        assert open_buffer(buf).manifest().positions == position, "positions advanced while the disk failed"
        seg.unlink()
        shutil.move(tmp_path / "segments.saved", seg)
        wait_for(lambda: open_buffer(buf).stats()["rows"] == 800)
        assert reg.get_sample_value("rankrl_streamer_paused") == 0
    finally:
        s.stop()
        t.join(30)
    got = stored_hashes(buf)
    assert len(got) == len(set(got)) == 800
    assert os.path.getsize(src) == open_buffer(buf).manifest().positions[f"file:{src.resolve()}"]


def events(n: int, seed: int) -> list[bytes]:
    return [orjson.dumps(e) + b"\n" for _, _, _, evs in simulate(RankingWorld(), n, seed=seed) for e in evs]


@pytest.mark.slow  # three `rankrl stream` runs each: the full tier
@pytest.mark.parametrize(
    "how", ["replaced_smaller", "replaced_larger", "truncated_rewritten_larger", "truncated_rewritten_smaller"]
)
def test_a_file_replaced_or_rewritten_in_place_is_read_whole(tmp_path: Path, how: str) -> None:
    """Today's failures: a smaller new file lost every event (its rows fell below the stored position and were
    dropped), a larger one lost the part before the old position (1,000 of 1,500), and dead letters at offsets
    already used were suppressed. Each new file is now a new generation, read from its start."""
    src, buf = tmp_path / "events.jsonl", tmp_path / "buffer"
    first = events(800, seed=11)
    src.write_bytes(b"".join(first) + b"not json\n")
    assert subprocess.run(stream_cmd(src, buf, "--stop-when-idle", "1"), capture_output=True).returncode == 0
    second = events(300 if how.endswith("smaller") else 1500, seed=12)
    body = b"also not json\n" + b"".join(second)
    if how.startswith("replaced"):
        tmp = src.with_suffix(".new")
        tmp.write_bytes(body)
        tmp.replace(src)  # another inode at the same path (a rotation)
    else:
        with open(src, "r+b") as f:  # the same inode, cut and written again
            f.truncate(0)
            f.write(body)
    r = subprocess.run(stream_cmd(src, buf, "--stop-when-idle", "1"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reading the new file from its start as generation 1" in r.stderr
    got = stored_hashes(buf)
    want = {log_id_hash(orjson.loads(line)["log_id"]) for line in first + second}
    assert len(got) == len(set(got)) and set(got) == want, f"lost {len(want - set(got))}"
    letters = [orjson.loads(line) for line in (buf / "dlq.jsonl").read_bytes().splitlines()]
    assert sorted(d["offset"] for d in letters) == [0, sum(map(len, first))]  # both dead letters, once each
    # a restart reads nothing again
    r = subprocess.run(stream_cmd(src, buf, "--stop-when-idle", "1"), capture_output=True, text=True)
    assert r.returncode == 0 and len(stored_hashes(buf)) == len(got)


def test_a_running_streamer_logs_a_summary_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """Reported: a daemon running for hours logged nothing between its start and its stop."""
    import logging

    import streamer.loop

    monkeypatch.setattr(streamer.loop, "SUMMARY_INTERVAL_S", 0.0)  # every refresh, instead of once a minute
    src, buf = tmp_path / "events.jsonl", tmp_path / "buffer"
    src.write_bytes(b"".join(events(200, seed=13)) + b"not json\n")
    s = build_streamer(_config(src, buf), CollectorRegistry(), stop_when_idle_s=2.5)
    with caplog.at_level(logging.INFO, logger="streamer.loop"):
        assert s.run() == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("streamer summary")]
    assert lines and "appended=200" in lines[-1] and "dead_letters=1" in lines[-1], lines[-1:]
