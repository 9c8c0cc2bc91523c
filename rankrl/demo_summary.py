"""The demo's summary: every registered cycle with its estimate beside the simulator's truth, and the plot.

For each version the gate's evidence (from its typed report) and the true conversion of what it serves (its
policy.pt, with its exploration), next to the logging policy's and the best known policy's truth; printed as a
table and drawn as conversion per cycle (PNG).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from common.buffer import BufferFormatError, open_buffer
from common.exploration import DirichletExploration
from common.ope import WEIGHT_LOG10_EDGES
from deploy.registry import ModelRegistry, report_of
from deploy.serving import load_policy_mean
from rankrl.demo_options import DemoOptions
from rankrl.sim import Policy, RankingWorld, personalised_policy

log = logging.getLogger(__name__)


def buffer_rows(path: Path) -> int:
    try:
        return int(open_buffer(path).stats()["rows"])
    except (BufferFormatError, FileNotFoundError):
        return 0


def cycle_rows(registry: ModelRegistry) -> list[dict[str, Any]]:
    """One row per registered version, oldest first, with the gate's evidence."""
    rows = []
    for v in registry.versions():
        m = registry.manifest(v)
        r = report_of(m)
        if r is None:
            continue
        cand = None if r.candidate is None else r.candidate.snips_conversion
        diff = r.difference
        rows.append(
            {
                "version": v,
                "parent": m.get("parent"),
                "cumulative_steps": m.get("cumulative_steps"),
                "decision": r.decision,
                "promoted_step": r.promoted_step,
                "tested_step": r.steps[-1].step if r.steps else None,
                "reasons": list(r.reasons),
                "holdout_rows": m["data_window"]["holdout_rows"],
                "estimate": None if cand is None else cand.value,
                "estimate_low": None if cand is None else cand.ci_low,
                "estimate_high": None if cand is None else cand.ci_high,
                "baseline_estimate": None if r.champion is None else r.champion.snips_conversion.value,
                "delta": None if diff is None else diff.delta,
                "delta_low": None if diff is None else diff.ci_low,
                "delta_high": None if diff is None else diff.ci_high,
                "delta_lcb": None if diff is None else diff.lcb,
                "margin": r.margin,
                "ess_fraction": None if r.candidate_weights is None else r.candidate_weights.ess_fraction,
                "pareto_k": None if r.candidate_weights is None else r.candidate_weights.pareto_k,
                "weights_log10_histogram": None if r.candidate_weights is None else r.candidate_weights.log10_histogram,
            }
        )
    return rows


def summarise(opts: DemoOptions, world: RankingWorld, started: float, served: int) -> dict[str, Any]:
    """The simulator's truth for every registered candidate, the logger and the best known policy."""
    registry = ModelRegistry(opts.dir / "models")
    ex = DirichletExploration(opts.kappa)

    def truth(policy: Policy) -> float:
        # one context sample for every policy: common random numbers make the comparisons sharp
        return world.true_value(policy, ex, n_contexts=opts.truth_contexts, seed=opts.seed + 999).conversion

    logging_true = truth(world.logging_policy)
    best_true = truth(personalised_policy)
    cycles = cycle_rows(registry)
    champion = None
    for c in cycles:
        c["true_conversion"] = truth(load_policy_mean(registry.path(c["version"], "policy.pt")))
        if c["decision"] == "PROMOTE":
            champion = c
        c["champion_after"] = champion["version"] if champion else None
        c["champion_true_after"] = champion["true_conversion"] if champion else logging_true
    current = registry.champion()
    return {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "seconds": round(time.time() - started, 1),
        "searches_served": served + opts.history,
        "buffer_rows": buffer_rows(opts.dir / "buffer"),
        "logging_true_conversion": logging_true,
        "best_known_true_conversion": best_true,
        "cycles": cycles,
        "champion": current,
        "champion_true_conversion": next((c["true_conversion"] for c in cycles if c["version"] == current), None),
        "champion_estimated_conversion": next((c["estimate"] for c in cycles if c["version"] == current), None),
    }


def format_summary(s: dict[str, Any]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = [
        "",
        f"rankrl demo: {s['searches_served']:,} searches in {s['seconds']:.0f} s, {len(s['cycles'])} training cycles",
        "",
        f"  {'cycle':<6} {'version':<8} {'steps':>6} {'decision':<36} {'estimate [95% CI]':<26} "
        f"{'LCB Δ':>9} {'ESS/n':>6} {'TRUE':>7}",
    ]
    for i, c in enumerate(s["cycles"], 1):
        dec = c["decision"] or "-"
        if c["reasons"]:
            dec += ":" + ",".join(c["reasons"])
        step = c["promoted_step"] if c["decision"] == "PROMOTE" else c["tested_step"]
        if step is not None and step < 1.0:
            dec += f" (step {step:g})"
        est = "-"
        if c["estimate"] is not None:
            est = f"{pct(c['estimate'])} [{pct(c['estimate_low'])}, {pct(c['estimate_high'])}]"
        lcb = "-" if c["delta_lcb"] is None else f"{100 * c['delta_lcb']:+.2f}pp"
        ess = "-" if c["ess_fraction"] is None else f"{c['ess_fraction']:.2f}"
        lines.append(
            f"  {i:<6} {c['version']:<8} {c['cumulative_steps'] or 0:>6} {dec[:36]:<36} {est:<26} {lcb:>9} {ess:>6} "
            f"{pct(c['true_conversion']):>7}"
        )
    lo, best = s["logging_true_conversion"], s["best_known_true_conversion"]
    lines += ["", f"  logging policy (before rankrl), true conversion:   {pct(lo)}"]
    lines.append(f"  simulator's best known policy, true conversion:   {pct(best)}")
    if s["champion"]:
        t, e = s["champion_true_conversion"], s["champion_estimated_conversion"]
        lines.append(
            f"  champion {s['champion']}: estimated {pct(e)}, TRUE {pct(t)} "
            f"({100 * (t / lo - 1):+.1f}% against the logging policy)"
        )
    else:
        lines.append("  champion: none promoted; the logging policy still serves (see the reasons above)")
    for name, lat in (s.get("service_latency") or {}).items():
        lines.append(f"  rankrl serve /{name.replace('_', '/')}: {lat['calls']:,} calls as the engine saw them, "
                     f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")  # fmt: skip
    lines.append("  TRUE: the simulator's exact expected conversion of the version's served policy, with exploration.")
    lines.append("  (step t): the estimate and LCB Δ are those of the candidate moved t of the way from the champion")
    lines.append("  (or the logger): the step promoted, which is what serves, or the first step that failed.")
    return "\n".join(lines)


def plot_summary(s: dict[str, Any], path: Path) -> Path:
    """Three panels, one x per cycle: conversion (each candidate's estimate and truth, the champion's truth, the
    logger's and the best known policy's); what decided (Δ against the baseline, the lower bound the gate compares
    and its margin); and each cycle's importance-weight distribution. Artists carry gids for tests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cyc = s["cycles"]
    x = np.arange(1, len(cyc) + 1)
    fig, (ax, ad, aw) = plt.subplots(3, 1, figsize=(8, 10), gridspec_kw={"height_ratios": [3, 2, 2]})
    ax.axhline(100 * s["logging_true_conversion"], color="grey", ls="--", label="logging policy (true)")
    ax.axhline(100 * s["best_known_true_conversion"], color="green", ls=":", label="best known policy (true)")
    nan = lambda key, c: np.nan if c.get(key) is None else 100 * c[key]  # noqa: E731
    if cyc:
        est = np.array([nan("estimate", c) for c in cyc])
        low, high = np.array([nan("estimate_low", c) for c in cyc]), np.array([nan("estimate_high", c) for c in cyc])
        ax.errorbar(x, est, yerr=[est - low, high - est], fmt="o", color="tab:blue", capsize=4,
                    label="candidate, estimated (SNIPS, 95% CI)")  # fmt: skip
        ax.plot(x, [100 * c["true_conversion"] for c in cyc], "x", color="tab:red", ms=9, label="candidate (true)")
        ax.step(x, [100 * c["champion_true_after"] for c in cyc], where="mid", color="tab:purple",
                label="champion after the cycle (true)")  # fmt: skip
        for xi, c in zip(x, cyc, strict=True):
            if c["decision"] == "PROMOTE":
                ax.annotate("promoted", (xi, 100 * c["true_conversion"]), textcoords="offset points", xytext=(0, 8),
                            ha="center", fontsize=8)  # fmt: skip
        ax.set_xticks(x)
    ax.set_ylabel("conversion rate (%)")
    ax.set_title("rankrl demo: conversion per cycle")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3)

    # What decided: Δ (the step shown: promoted, else the last tested) with its lower bound against the margin.
    margins = [c["margin"] for c in cyc if c.get("margin") is not None]
    if margins:
        ad.axhline(100 * margins[-1], color="tab:red", ls="--", gid="margin", label="margin (gate.min_lift)")
    ad.axhline(0.0, color="grey", lw=0.8)
    for xi, c in zip(x, cyc, strict=True):
        if c.get("delta") is None:
            continue
        color = "tab:green" if c["decision"] == "PROMOTE" else "tab:orange"
        ad.vlines(xi, nan("delta_low", c), nan("delta_high", c), color=color, lw=2, alpha=0.5)
        ad.plot([xi], [100 * c["delta"]], "o", color=color)
        ad.plot([xi], [100 * c["delta_lcb"]], marker="_", ms=16, mew=3, color=color, ls="none", gid="lcb")
    ad.plot([], [], marker="_", ms=12, mew=3, color="tab:green", ls="none", label="lower bound (promoted)")
    ad.plot([], [], marker="_", ms=12, mew=3, color="tab:orange", ls="none", label="lower bound (held)")
    ad.set_ylabel("Δ conversion vs baseline (pp)")
    ad.set_title("what the gate decided on: Δ, its 90% interval and its lower bound", fontsize=9)
    ad.legend(fontsize=7, loc="best")
    ad.set_xticks(x)

    edges = 10.0**WEIGHT_LOG10_EDGES
    for i, c in enumerate(cyc):
        h = c.get("weights_log10_histogram")
        if h is None:
            continue
        ess = "" if c.get("ess_fraction") is None else f", ESS/n {c['ess_fraction']:.2f}"
        aw.stairs(list(h), list(edges), color=plt.get_cmap("viridis")(i / max(len(cyc) - 1, 1)), gid="weights",
                  label=f"{c['version']}{ess}")  # fmt: skip
    aw.set_xscale("log")
    aw.axvline(1.0, color="grey", lw=0.8)
    aw.set_xlabel("importance weight w = candidate / logged density (log scale; outer bins: beyond)")
    aw.set_ylabel("searches")
    aw.set_title("the holdout's importance weights per cycle (the step shown)", fontsize=9)
    if aw.get_legend_handles_labels()[0]:
        aw.legend(fontsize=7, loc="upper left", ncol=2)
    ad.set_xlabel("training cycle")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
