"""Parse workers: the same rows as parsing inline, in order; revoked partitions' in-flight rows are never
applied; a worker does not outlive a killed streamer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from common.buffer import open_buffer
from common.config import load_config
from common.reward import RewardConfig
from rankrl.sim import RankingWorld, simulate
from streamer.daemon import build_streamer
from streamer.encode import encode
from streamer.parsepool import ParsePool
from streamer.sources import Record

BAD = [b"not json", b'{"log_id": "x"}', orjson.dumps({"log_id": 3})]


def batch(n: int, seed: int, key: str = "kafka:t:0", first: int = 0) -> list[Record]:
    values = [orjson.dumps(e) for _, _, _, evs in simulate(RankingWorld(), n, seed=seed) for e in evs][:n]
    values[5:5] = BAD  # bad records among good ones
    return [Record(key, first + i, first + i + 1, v) for i, v in enumerate(values)]


def test_workers_encode_what_inline_encodes_in_order() -> None:
    cfg = RewardConfig()
    batches = [batch(300, seed=s) for s in range(4)]
    pool = ParsePool(2, cfg)
    try:
        results = []
        for b in batches:  # two in flight at a time; collected oldest first
            if pool.full():
                results.append(pool.collect())
            pool.submit(b)
        while pool.in_flight:
            results.append(pool.collect())
    finally:
        pool.close()
    assert [r.records for r in results] == batches
    for r, b in zip(results, batches, strict=True):
        want = encode([x.value for x in b], cfg)
        assert r.result is not None
        np.testing.assert_array_equal(r.result.ok, want.ok)
        assert r.result.errors == want.errors and [e[0] for e in want.errors] == [5, 6, 7]
        for name, col in want.columns.items():
            np.testing.assert_array_equal(r.result.columns[name], col, err_msg=name)


def test_rows_of_a_partition_revoked_while_in_flight_are_not_applied(tmp_path: Path) -> None:
    cli = {
        "streamer": {"source": f"file://{tmp_path / 'none.jsonl'}", "metrics_port": 0, "parse_workers": 1},
        "paths": {"buffer_dir": str(tmp_path / "buffer")},
    }
    s = build_streamer(load_config(environ={}, cli=cli), CollectorRegistry())
    try:
        mine, gone = batch(100, seed=1, key="kafka:t:0"), batch(100, seed=2, key="kafka:t:1")
        since = s._revocations
        s.pool.submit(mine + gone, since)
        s.drop_partitions({"kafka:t:1"})  # the rebalance listener, while the batch is in the worker
        s.apply(s.pool.collect())
        s.checkpoint()
    finally:
        s.pool.close()
        s.dead_letters.close()
    stored = open_buffer(tmp_path / "buffer")
    assert stored.load().rows == 100  # the valid rows of partition 0 only
    assert stored.manifest().positions == {"kafka:t:0": len(mine)}  # partition 1 left for its next owner
    letters = [orjson.loads(line) for line in (tmp_path / "buffer" / "dlq.jsonl").read_bytes().splitlines()]
    assert {d["source"] for d in letters} == {"kafka:t:0"} and len(letters) == len(BAD)


def test_a_worker_exits_when_the_streamer_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from common.reward import RewardConfig
        from streamer.parsepool import ParsePool
        if __name__ == "__main__":
            pool = ParsePool(1, RewardConfig())
            print(pool._procs[0].pid, flush=True)
            time.sleep(600)
        """
    )
    (tmp_path / "holder.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen([sys.executable, str(tmp_path / "holder.py")], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout is not None
    worker = int(p.stdout.readline())
    os.kill(worker, 0)  # alive
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and "zombie" not in _state(worker):
        assert time.monotonic() < deadline, "the parse worker outlived its killed parent"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"
