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


@pytest.mark.parametrize("with_weights", [True, False], ids=["report", "older-report"])
def test_the_demo_plot_draws_what_the_gate_decided_on(tmp_path: Path, with_weights: bool) -> None:
    """Per cycle: the lower bound of Δ against the margin, and the importance-weight distribution (fast: drawn
    from a summary, no demo run). A summary from reports without weight histograms still draws."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from rankrl.demo_summary import plot_summary

    hist = [0] * 10 + [5, 40, 300, 600, 40, 10, 5] + [0] * 7
    cycles = [
        {"version": f"v000{i}", "decision": d, "estimate": 0.09, "estimate_low": 0.085, "estimate_high": 0.095,
         "true_conversion": 0.09, "champion_true_after": 0.088, "delta": delta, "delta_low": delta - 0.002,
         "delta_high": delta + 0.002, "delta_lcb": delta - 0.0017, "margin": 0.0002, "ess_fraction": 0.3,
         "weights_log10_histogram": hist if with_weights else None}
        for i, (d, delta) in enumerate([("PROMOTE", 0.004), ("HOLD", 0.001)], 1)
    ]  # fmt: skip
    summary = {"cycles": cycles, "logging_true_conversion": 0.082, "best_known_true_conversion": 0.11}
    seen: list = []
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(fig)
        return real_savefig(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Figure, "savefig", keep)
        png = plot_summary(summary, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    (fig,) = seen
    gid = lambda name: fig.findobj(lambda a: a.get_gid() == name)  # noqa: E731
    (margin,) = gid("margin")
    assert margin.get_ydata()[0] == pytest.approx(0.02)
    assert [float(m.get_ydata()[0]) for m in gid("lcb")] == pytest.approx([0.23, -0.07])
    weights = gid("weights")
    assert len(weights) == (2 if with_weights else 0)
    assert all(w.get_data().values.sum() == sum(hist) for w in weights)
