"""`rankrl demo` end to end: simulated history and live traffic, the streamer and the trainer as child processes,
a gate decision, and the summary with the simulator's truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli_smoke import run_cli

pytestmark = pytest.mark.slow


def test_demo_promotes_a_champion_that_truly_converts_better(tmp_path: Path) -> None:
    # --cycles 1 ends the demo once the first cycle is registered (about 2 minutes on 2 cores); --minutes is the cap
    r = run_cli(
        "demo",
        "--minutes", "8",
        "--cycles", "1",
        "--dir", str(tmp_path),
        "--seed", "0",
        "--streamer-metrics-port", "0",
        "--trainer-metrics-port", "0",
        timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "== 3/3 summary" in r.stdout
    s = json.loads((tmp_path / "results" / "demo_summary.json").read_text())
    assert s["cycles"], "no training cycle registered"
    assert s["champion"] is not None, r.stdout
    assert f"champion {s['champion']}: estimated" in r.stdout
    assert any(c["decision"] == "PROMOTE" for c in s["cycles"])
    # the claim the demo makes: the promoted policy truly converts better than the logging policy
    assert s["champion_true_conversion"] > s["logging_true_conversion"]
    assert s["buffer_rows"] >= s["options"]["history"]
    # live traffic went through rankrl serve and the join: ranked over HTTP, outcomes reported, rows stored
    assert s["service_latency"]["rank_batch"]["calls"] > 0 and s["service_latency"]["outcome"]["calls"] > 0
    assert s["outcomes_reported"] == s["service_latency"]["outcome"]["calls"]
    decisions = (tmp_path / "decisions.jsonl").read_text().splitlines()
    assert len(decisions) > s["options"]["history"]  # serve appended the live decisions to the history's log
    assert (tmp_path / "results" / "demo_conversion.png").stat().st_size > 10_000
    # the children stopped and logged; live searches were served by the new champion only after its promotion
    assert (tmp_path / "logs" / "streamer.log").exists() and (tmp_path / "logs" / "trainer.log").exists()
