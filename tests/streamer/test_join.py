"""The outcome join on the embedded default (two JSONL files), through the real `rankrl stream`: windows, merges,
the default outcome, late and unknown outcomes, and exactly once across SIGKILL at random moments."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.buffer import open_buffer
from common.decisions import iso_now
from common.exploration import DirichletExploration
from common.schema import ACTION_KEYS
from streamer.join import JoinSource
from streamer.sources.base import Record
from tests.helpers import original_example_event

WINDOW, LATENESS = 10.0, 1.0


def traffic(
    n: int, seed: int = 0, unknown: int = 20
) -> tuple[list[tuple[float, bytes]], list[tuple[float, bytes]], dict]:
    """Decisions one every 0.5 s of event time (two hours ago) and their outcomes, each (event time, line):
    i % 3 == 0 buys at +8 s; i % 3 == 1 clicks at +2 s then buys at +5 s (merged: a purchase); i % 3 == 2 reports
    nothing (stored as "none"); i % 7 == 0 also reports a click after its window (late); `unknown` outcomes name
    decisions that never existed."""
    rng = np.random.default_rng(seed)
    ex = DirichletExploration()
    base = original_example_event()
    t0 = time.time() - 7200
    decisions, outcomes = [], []
    late = 0
    for i in range(n):
        t = t0 + 0.5 * i
        w = rng.dirichlet(np.ones(7))
        lp = float(ex.log_density(w[None], np.full((1, 7), 1 / 7))[0])
        d = {"log_id": f"s{i}", "created_at": iso_now(t), "state": base["state"],
             "action": dict(zip(ACTION_KEYS, w.tolist(), strict=True)), "log_propensity": lp,
             "policy_version": "default", "ranking_metadata": base["ranking_metadata"]}  # fmt: skip
        decisions.append((t, orjson.dumps(d) + b"\n"))

        def outcome(at: float, action: str, lid: str = f"s{i}") -> None:
            ranking = ["prod_1", "prod_2", "prod_3", "prod_4"]
            o: dict = {
                "log_id": lid,
                "created_at": iso_now(at),
                "ranking": ranking,
                "outcomes": {"user_action": action},
            }
            if action == "purchase":
                o["outcomes"].update(purchased_ranks=[2], purchased_total_value=2500.0, interacted_ranks=[1, 2])
            elif action == "click":
                o["outcomes"]["interacted_ranks"] = [1]
            outcomes.append((at, orjson.dumps(o) + b"\n"))

        if i % 3 == 0:
            outcome(t + 8, "purchase")
        elif i % 3 == 1:
            outcome(t + 2, "click")
            outcome(t + 5, "purchase")
        if i % 7 == 0:
            outcome(t + WINDOW + 5, "click")
            late += 1
    for k in range(unknown):
        ghost = {"log_id": f"ghost{k}", "created_at": iso_now(t0 + 10 * k), "ranking": ["a"],
                 "outcomes": {"user_action": "click", "interacted_ranks": [1]}}  # fmt: skip
        outcomes.append((t0 + 10 * k, orjson.dumps(ghost) + b"\n"))
    outcomes.sort(key=lambda x: x[0])
    expected = {"rows": n, "converted": sum(1 for i in range(n) if i % 3 != 2), "late": late, "unknown": unknown}
    return decisions, outcomes, expected


def stream_cmd(tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "rankrl", "stream",
        "--decisions", f"file://{tmp / 'decisions.jsonl'}", "--outcomes", f"file://{tmp / 'outcomes.jsonl'}",
        "--buffer", str(tmp / "buffer"), "--metrics-port", "0",
        "--set", f"join.window_s={WINDOW}", "--set", f"join.lateness_s={LATENESS}",
        "--set", "streamer.segment_max_rows=200", "--set", "streamer.segment_max_age_s=0.3",
        "--set", "streamer.max_poll_records=100",
        *extra,
    ]  # fmt: skip


def dead_letter_reasons(tmp: Path) -> Counter:
    path = tmp / "buffer" / "dlq.jsonl"
    return (
        Counter(orjson.loads(line)["reason"] for line in path.read_bytes().splitlines()) if path.exists() else Counter()
    )


def check_buffer(tmp: Path, expected: dict) -> None:
    w = open_buffer(tmp / "buffer").load()
    hashes = w.column("log_id_hash").tolist()
    assert len(hashes) == expected["rows"], f"{len(hashes)} rows stored for {expected['rows']} decisions"
    assert len(set(hashes)) == len(hashes), "a decision was stored twice"
    assert int(w.column("converted").sum()) == expected["converted"]
    # every row keeps the logged density of what was served (the gate evaluates with it)
    assert np.isfinite(w.column("log_propensity")).all()
    reasons = dead_letter_reasons(tmp)
    assert reasons["late_outcome"] == expected["late"] and reasons["unknown_decision"] == expected["unknown"], reasons


@pytest.mark.slow  # a process-level run (seconds): the full tier
def test_decisions_and_outcomes_become_events(tmp_path: Path) -> None:
    decisions, outcomes, expected = traffic(600)
    (tmp_path / "decisions.jsonl").write_bytes(b"".join(line for _, line in decisions))
    (tmp_path / "outcomes.jsonl").write_bytes(b"".join(line for _, line in outcomes))
    r = subprocess.run(stream_cmd(tmp_path, "--stop-when-idle", "2"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    check_buffer(tmp_path, expected)
    # merged outcomes keep the deepest level: a click then a purchase is one purchase, with the purchase's reward
    w = open_buffer(tmp_path / "buffer").load()
    rewards = w.column("reward")
    assert len(set(np.round(rewards[w.column("converted").astype(bool)], 6).tolist())) == 1
    assert (rewards[~w.column("converted").astype(bool)] < 0).all()  # "none": the no-interaction penalty


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Decisions and outcomes arrive over ~10 s while the joining streamer is SIGKILLed 4 times at random
    moments and restarted: every decision is stored once, with its outcomes, and every dead letter once."""
    decisions, outcomes, expected = traffic(4000, seed=1)
    merged = sorted([(t, "d", line) for t, line in decisions] + [(t, "o", line) for t, line in outcomes])
    (tmp_path / "decisions.jsonl").write_bytes(b"")
    (tmp_path / "outcomes.jsonl").write_bytes(b"")

    def produce() -> None:  # in event-time order, as serve logs them, ~800 lines a second
        with open(tmp_path / "decisions.jsonl", "ab") as fd, open(tmp_path / "outcomes.jsonl", "ab") as fo:
            for i in range(0, len(merged), 40):
                for _, kind, line in merged[i : i + 40]:
                    (fd if kind == "d" else fo).write(line)
                fd.flush()
                fo.flush()
                time.sleep(0.05)

    producer = threading.Thread(target=produce)
    producer.start()
    rnd = random.Random(7)
    kills = 0
    while kills < 4:
        p = subprocess.Popen(stream_cmd(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(2.5, 5.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
    producer.join()
    r = subprocess.run(stream_cmd(tmp_path, "--stop-when-idle", "2"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    check_buffer(tmp_path, expected)


class TwoPartitions:
    """A source that owns a decisions and an outcomes partition and hands out what the test queues, one poll at a
    time; `behind` is what it has not handed out yet (Kafka: records behind the partition's end)."""

    def __init__(self) -> None:
        self.queued: list[list[Record]] = []

    def poll(self, timeout_s: float) -> list[Record]:
        return self.queued.pop(0) if self.queued else []

    def behind(self) -> set[str]:
        return {r.key for batch in self.queued for r in batch}

    def commit(self, positions: dict[str, int]) -> bool:
        return True

    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def lag(self) -> dict[str, int]:
        return {}

    def caught_up(self) -> bool:
        return not self.queued

    def close(self) -> None: ...


def test_after_a_restart_windows_wait_for_the_outcomes_partition(tmp_path: Path) -> None:
    """A restart reads a backlog of decisions before the outcomes' partition (Kafka hands out one partition's
    records per poll): their windows must not close empty before the outcomes are read."""
    decisions, outcomes, expected = traffic(60, unknown=0)

    def records(key: str, lines: list[tuple[float, bytes]]) -> list[Record]:
        return [Record(key, i, i + 1, line.rstrip(b"\n"), topic=key) for i, (_, line) in enumerate(lines)]

    src = TwoPartitions()
    src.queued = [records("kafka:d:0", decisions), records("kafka:o:0", outcomes)]
    now = [time.time()]
    join = JoinSource(src, lambda r: r.key == "kafka:d:0", lambda r, e: None, WINDOW, LATENESS, clock=lambda: now[0])
    events = [r for _ in range(3) for r in join.poll(0)]
    now[0] += 10 * WINDOW  # the partitions go quiet: every window closes
    events = [r for r in [*events, *join.poll(0)] if not r.marker]
    assert len(events) == expected["rows"]
    bought = sum(orjson.loads(r.value or b"")["outcomes"]["user_action"] == "purchase" for r in events)
    assert bought == expected["converted"], f"{expected['converted'] - bought} windows closed before their outcomes"
