"""A fuzz corpus through the real file-source streamer: no crash, every valid event once, every bad one dead-lettered
with its reason, memory bounded by bytes (issue 14). The Kafka twin is tests/integration/test_poison_kafka.py."""

from __future__ import annotations

import collections
import gc
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from common.buffer import open_buffer
from streamer.writer import log_id_hash
from tests.fuzz_corpus import Case, corpus, oversized

pytestmark = pytest.mark.slow


def check_outcome(cases: list[Case], stored: list[int], letters: list[tuple[str, str]]) -> collections.Counter:
    """Stored rows are exactly the valid log ids, once each; dead letters are exactly the bad cases, by reason."""
    want = {log_id_hash(c.log_id) for c in cases if c.reason is None and c.log_id is not None}
    assert len(stored) == len(set(stored)), "a row was stored twice"
    assert set(stored) == want
    expected = collections.Counter(c.reason for c in cases if c.reason is not None)
    got = collections.Counter(reason for reason, _ in letters)
    assert got == expected
    return got


def _peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a process and its children, from /proc; 0 once gone."""
    total = 0.0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return 0.0
    return total + sum(_peak_rss_mib(int(k)) for k in kids)


def run_measured(cmd: list[str], timeout_s: float = 600.0) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command, sampling the peak RSS of it and its children (ru_maxrss would count the forked child's
    pages before exec, i.e. this test process's own memory)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, deadline = 0.0, time.monotonic() + timeout_s
    while p.poll() is None and time.monotonic() < deadline:
        peak = max(peak, _peak_rss_mib(p.pid))
        time.sleep(0.05)
    out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(cmd, p.returncode, out, err), peak


def test_fuzz_corpus_through_the_file_source(tmp_path: Path) -> None:
    cases = corpus(n_valid=2_000, n_bad=10_500)
    # 150 lines of 1.5 MiB and two of 5 MiB (over the 4 MiB read chunk, which used to stall the source forever)
    cases += list(oversized(150, 1_500_000, "too_large")) + list(oversized(2, 5 << 20, "too_large"))
    src = tmp_path / "events.jsonl"
    with open(src, "wb") as f:
        for c in cases:
            assert c.value is not None and b"\n" not in c.value
            f.write(c.value + b"\n")
        f.write(b"\n   \n")  # blank lines are skipped (JSONL), not records
    buf = tmp_path / "buffer"
    cmd = [sys.executable, "-m", "rankrl", "stream", "--source", f"file://{src}", "--buffer", str(buf),
           "--metrics-port", "0", "--stop-when-idle", "2"]  # fmt: skip
    cases = [Case(None, c.reason, c.log_id, c.kind) for c in cases]  # the expectations only: free the bytes
    gc.collect()
    r, peak_mib = run_measured(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    letters = []
    files = sorted(buf.glob("dlq.jsonl.*"), key=lambda p: -int(p.suffix[1:])) + [
        p for p in [buf / "dlq.jsonl"] if p.exists()
    ]
    assert len(files) > 1  # over 64 MiB of dead letters: rotated after a seal, nothing lost in the rotation
    for line in b"".join(p.read_bytes() for p in files).splitlines():
        d = orjson.loads(line)
        letters.append((d["reason"], d["field"]))
        assert len(line) < 600 << 10  # a dead letter keeps at most 256 KiB of its record (JSON-escaped)
    stored = open_buffer(buf).load().column("log_id_hash").tolist()
    got = check_outcome(cases, stored, letters)
    # The streamer and its parse worker together, for ~640 MB of records of which 235 MB are lines over the limit
    # (600 lines of 1 MiB took 1.3 GB before memory was bounded by bytes).
    print(f"fuzz file source: {len(cases)} records, dead letters {dict(got)}, peak RSS {peak_mib:.0f} MiB")
    assert 0 < peak_mib < 500
