"""`rankrl evaluate`: a candidate against the champion (or the logging policy) on the buffer's newest rows.

Prints the gate's report as a table, writes it as JSON, and plots what decides (PNG): the paired Δ of each step
tested with the lower bound the gate compares against its margin, and the importance-weight distribution.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.buffer import BufferFormatError, open_buffer
from common.config import RankrlConfig
from common.gate_report import GateReport
from common.ope import WEIGHT_LOG10_EDGES, Estimate, Progress
from deploy.registry import ModelRegistry, RegistryError
from deploy.serving import load_policy_mean
from trainer.cycle import load_cql, policy_mean, resolve_device
from trainer.data import evaluation_data, finite_rows, fit_logging_model, split_holdout
from trainer.gate import GateDecision, build_gate

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class EvaluationError(RuntimeError):
    """`rankrl evaluate` cannot run: an unknown model, no buffer, or no rows in the window."""


def resolve_model(spec: str, registry: ModelRegistry) -> Path:
    """A registry version (checksums verified) or a path to a d3rlpy .d3 file."""
    p = Path(spec)
    if p.suffix == ".d3" and p.exists():
        return p
    return registry.path(spec, "model.d3")


def evaluate_models(
    cfg: RankrlConfig,
    candidate: str,
    champion: str | None,
    holdout_fraction: float | None = None,
    progress: Progress | None = None,
) -> GateDecision:
    """The trainer's gate (`build_gate`: its shrunk steps included) for a candidate against `champion`: a registry
    version or a .d3 file, by default the registry's champion, or the logging policy when there is none or
    `champion == "logging"`. Raises EvaluationError with a message for an unknown model or an empty buffer."""
    registry = ModelRegistry(cfg.paths.registry_dir)
    try:
        window = open_buffer(cfg.paths.buffer_dir).load(window=cfg.trainer.window_s)
    except BufferFormatError as e:
        raise EvaluationError(str(e)) from None
    if window.rows == 0:
        raise EvaluationError(f"no rows in the buffer {cfg.paths.buffer_dir} within trainer.window_s")
    times = window.column("event_time")
    train_idx, hold = split_holdout(times, finite_rows(window), holdout_fraction or cfg.trainer.holdout_fraction)
    device = resolve_device(cfg.trainer.device)
    if champion is None:
        champion = registry.champion()
    elif champion == "logging":
        champion = None
    try:
        cand = policy_mean(load_cql(resolve_model(candidate, registry), device))
        champ = None
        if champion:
            # a registry champion as served (policy.pt: a promoted shrunk step is a mix); a .d3 file as its action
            p = Path(champion)
            champ = (
                policy_mean(load_cql(p, device))
                if p.suffix == ".d3" and p.exists()
                else load_policy_mean(registry.path(champion, "policy.pt"))
            )
    except (RegistryError, FileNotFoundError) as e:
        raise EvaluationError(f"cannot load a model: {e}") from None
    data = evaluation_data(window, hold)
    gate = build_gate(cfg)
    missing = not np.isfinite(data.logging_log_density).all()
    from_logger = champ is None and min(gate.shrinkage_steps) < 1.0
    logging_model = None
    if missing or from_logger:
        fit_rows = evaluation_data(window, train_idx)
        logging_model = fit_logging_model(fit_rows.states, fit_rows.actions)
    decision = gate.evaluate(
        data,
        cand,
        champ,
        behaviour_fit=logging_model if missing else None,
        logging_mean=logging_model.mean if from_logger and logging_model is not None else None,
        seed=cfg.trainer.seed,
        progress=progress,
    )
    decision.report = decision.report.with_extras(
        models={"candidate": candidate, "champion": champion or "logging policy"}
    )
    return decision


def _row(name: str, e: Estimate | None) -> str:
    if e is None:
        return f"  {name:<28} -"
    boot = "" if e.boot_low is None else f"   bootstrap [{e.boot_low:.4f}, {e.boot_high:.4f}]"
    return f"  {name:<28} {e.value:.4f}   95% t [{e.ci_low:.4f}, {e.ci_high:.4f}]{boot}"


def format_report(r: GateReport) -> str:
    lines = [
        f"decision: {r.decision}" + (f" ({', '.join(r.reasons)})" if r.reasons else ""),
        f"rule:     {r.rule}",
        f"holdout:  {r.evaluated_rows} searches, {r.conversions} conversions, weights {r.weights_source}",
    ]
    if r.business is not None:
        b = r.business
        lines.append(
            f"logged:   conversion {b['conversion_rate']:.4f}  MRR {b['mrr']:.4f}  P@1 {b['precision_at_1']:.4f}  "
            f"P@10 {b['precision_at_10']:.4f}  revenue/search {b['revenue_per_session']:.2f}  "
            f"reward {b['mean_reward']:.3f}"
        )
    lines.append("conversion estimates:")
    if r.champion is not None:
        lines.append(_row(f"champion ({r.champion.policy}) SNIPS", r.champion.snips_conversion))
    if r.candidate is not None:
        lines.append(_row("candidate SNIPS", r.candidate.snips_conversion))
        lines.append(_row("candidate IPS", r.candidate.ips_conversion))
    if r.difference is not None:
        d = r.difference
        boot = "-" if d.lcb_boot is None else f"{d.lcb_boot:+.5f}"
        lines.append(
            f"difference: Δ {d.delta:+.5f}  LCB {d.lcb:+.5f} (t {d.lcb_t:+.5f}, bootstrap {boot})  MDE80 {d.mde80:.5f}"
        )
    if r.candidate_weights is not None:
        w = r.candidate_weights
        lines.append(
            f"weights:  ESS {w.ess:.0f} ({w.ess_fraction:.1%})  effective conversions "
            f"{w.effective_conversions:.0f}  max share {w.max_weight_share:.4f}  k̂ {w.pareto_k:.2f}  "
            f"w̄ {w.mean_weight:.3f}"
        )
    lines.append("checks:")
    lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.check:<32} {c.detail}" for c in r.checks]
    return "\n".join(lines)


def draw_report(r: GateReport) -> Figure:
    """What decides, drawn: left, the paired Δ of each step tested (point, two-sided interval, the lower bound the
    gate compares) against the margin `gate.min_lift`; right, the importance weights of the step shown (their
    log10 histogram, with ESS/n and k̂). Artists carry gids ("margin", "lcb", "weights") for tests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, aw) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    pp = 100.0  # percentage points
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.axvline(
        pp * r.margin, color="tab:red", ls="--", gid="margin", label=f"margin (gate.min_lift) {pp * r.margin:+.3f}pp"
    )
    for i, s in enumerate(r.steps):
        d = s.difference
        passed = r.promoted_step is not None and s.step <= r.promoted_step
        color = "tab:green" if passed else "tab:orange"
        ax.hlines(i, pp * d.ci_low, pp * d.ci_high, color=color, lw=2, alpha=0.5)
        ax.plot([pp * d.delta], [i], "o", color=color)
        ax.plot([pp * d.lcb], [i], marker="|", ms=18, mew=3, color=color, gid="lcb", ls="none",
                label="lower bound the gate compares" if i == 0 else None)  # fmt: skip
        ax.annotate(f"LCB {pp * d.lcb:+.3f}pp", (pp * d.lcb, i), textcoords="offset points", xytext=(0, 9),
                    ha="center", fontsize=7)  # fmt: skip
    if r.steps:
        ax.set_yticks(range(len(r.steps)), [f"step {s.step:g}" for s in r.steps])
        ax.set_ylim(-0.7, len(r.steps) - 0.3)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no candidate step evaluated", transform=ax.transAxes, ha="center")
    base = "champion" if r.champion is not None and r.champion.policy == "champion" else "logging policy"
    ax.set_xlabel(f"Δ conversion, candidate − {base} (pp; point, {100 * (1 - 2 * r.alpha):.0f}% interval)")
    title = f"gate: {r.decision}"
    if r.promoted_step is not None:
        title += f" step {r.promoted_step:g}"
    if r.reasons:
        title += f" ({', '.join(r.reasons)[:70]})"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")

    w = r.candidate_weights
    if w is not None and w.log10_histogram is not None:
        aw.stairs(list(w.log10_histogram), list(10.0**WEIGHT_LOG10_EDGES), fill=True, alpha=0.6, gid="weights")
        aw.set_xscale("log")
        aw.axvline(1.0, color="grey", lw=0.8)
        step = "" if r.shown is None else f" of step {r.shown.step:g}"
        aw.set_title(f"weights{step}: ESS/n {w.ess_fraction:.3f}, k̂ {w.pareto_k:.2f}, "
                     f"max share {w.max_weight_share:.4f}", fontsize=9)  # fmt: skip
        aw.set_xlabel("w = candidate / logged density (outer bins: beyond)")
        aw.set_ylabel("searches")
    else:
        aw.axis("off")
        aw.text(0.5, 0.5, "no weights in this report", transform=aw.transAxes, ha="center")
    fig.tight_layout()
    return fig


def plot_report(r: GateReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = draw_report(r)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(r: GateReport, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, p = out_dir / "evaluation_report.json", out_dir / "evaluation.png"
    j.write_text(json.dumps(r.to_dict(), indent=1, default=float))
    plot_report(r, p)
    return j, p
