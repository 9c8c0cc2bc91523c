"""`rankrl demo`: the whole loop on the embedded default (no Kafka), in one process group, for a few minutes.

    this process: the search engine                 child: rankrl stream         child: rankrl train
    simulator world ──► events.jsonl (appended) ──► file source ──► buffer/ ──► CQL cycle ──► gate ──► models/
        ▲  serves the champion's mean weights with exploration (the logging policy until there is one)   │
        └──────────────────────────────────────── champion pointer ◄─────────────────────────────────────┘

1. History: `history` searches logged by the simulator's logging policy (the days before rankrl), streamed into
   the buffer before the trainer starts.
2. Live: `rate` searches per second served by whatever is champion now, each logged with its propensity and
   policy version, while the trainer runs a cycle every `interval_minutes`.
3. Summary: every cycle's decision, its estimated conversion and the simulator's *true* conversion, against the
   logging policy and the simulator's best known policy; JSON and a PNG of conversion per cycle.

Everything lands in `dir` (replaced on each run); the children log to `dir/logs/`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from common.buffer import BufferFormatError, open_buffer
from common.exploration import DirichletExploration
from deploy.registry import ModelRegistry, report_of
from deploy.serving import ServingPolicy, load_policy_mean
from rankrl.demo_options import DemoOptions
from rankrl.sim import Policy, RankingWorld, personalised_policy, simulate, write_jsonl

log = logging.getLogger(__name__)


class Children:
    """The streamer and trainer subprocesses: started with their logs in dir/logs, stopped with SIGTERM."""

    def __init__(self, opts: DemoOptions) -> None:
        self.opts = opts
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        (opts.dir / "logs").mkdir(parents=True, exist_ok=True)

    def _common(self) -> list[str]:
        d = self.opts.dir
        sets = [
            f"paths.buffer_dir={d / 'buffer'}",
            f"paths.registry_dir={d / 'models'}",
            f"paths.results_dir={d / 'results'}",
            f"exploration.kappa={self.opts.kappa}",
            *self.opts.extra_set,
        ]
        return [a for s in sets for a in ("--set", s)]

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        logf = open(self.opts.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        cmd = [sys.executable, "-m", "rankrl", *args, *self._common()]
        env = {**os.environ, **(env or {})}
        self.procs[name] = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        log.info("demo started %s (pid %d), log %s", name, self.procs[name].pid, logf.name)

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                logf = self.opts.dir / "logs" / f"{name}.log"
                raise RuntimeError(f"the {name} exited early with code {p.returncode}: see {logf}")

    def stop(self, timeout: float = 60.0) -> dict[str, int | None]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
                log.warning("demo: %s did not stop within %.0f s; killed", name, timeout)
        return codes


def _buffer_rows(path: Path) -> int:
    try:
        return int(open_buffer(path).stats()["rows"])
    except (BufferFormatError, FileNotFoundError):
        return 0


def _append_events(path: Path, events: list[dict[str, Any]]) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(orjson.dumps(e) + b"\n" for e in events))


class SearchEngine:
    """Serves simulated searches with the current champion (deploy.serving, as production would) or the logger."""

    def __init__(self, world: RankingWorld, registry: ModelRegistry, kappa: float, seed: int) -> None:
        self.world = world
        self.registry = registry
        self.logging_exploration = DirichletExploration(kappa)
        self.seed = seed
        self.serving: ServingPolicy | None = None  # until the first promotion the logging policy serves
        self.served = 0

    @property
    def version(self) -> str:
        return "logging" if self.serving is None or self.serving.version is None else self.serving.version

    def serve(self, n: int, out: Path, start_time: float, interval_s: float) -> None:
        if self.serving is None and self.registry.champion() is not None:
            self.serving = ServingPolicy(self.registry)
        if self.serving is not None:
            before = self.serving.version
            self.serving.refresh()  # before reading version and exploration: one batch, one policy
            if self.serving.version != before:
                log.info("demo: the search engine now serves %s", self.serving.version)
            policy, exploration = self.serving.mean, self.serving.exploration
        else:
            policy, exploration = self.world.logging_policy, self.logging_exploration
        self.seed += 1
        for _, _, _, events in simulate(
            self.world,
            n,
            self.seed,
            policy=policy,
            exploration=exploration,
            start_time=start_time,
            interval_s=interval_s,
            policy_version=self.version,
        ):
            _append_events(out, events)
        self.served += n


def _cycles(registry: ModelRegistry) -> list[dict[str, Any]]:
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
                "delta_lcb": None if diff is None else diff.lcb,
                "ess_fraction": None if r.candidate_weights is None else r.candidate_weights.ess_fraction,
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
    cycles = _cycles(registry)
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
        "buffer_rows": _buffer_rows(opts.dir / "buffer"),
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
    lines.append("  TRUE: the simulator's exact expected conversion of the version's served policy, with exploration.")
    lines.append("  (step t): the estimate and LCB Δ are those of the candidate moved t of the way from the champion")
    lines.append("  (or the logger): the step promoted, which is what serves, or the first step that failed.")
    return "\n".join(lines)


def plot_summary(s: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cyc = s["cycles"]
    x = np.arange(1, len(cyc) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axhline(100 * s["logging_true_conversion"], color="grey", ls="--", label="logging policy (true)")
    ax.axhline(100 * s["best_known_true_conversion"], color="green", ls=":", label="best known policy (true)")
    if cyc:
        est = np.array([np.nan if c["estimate"] is None else c["estimate"] for c in cyc]) * 100
        low = np.array([np.nan if c["estimate_low"] is None else c["estimate_low"] for c in cyc]) * 100
        high = np.array([np.nan if c["estimate_high"] is None else c["estimate_high"] for c in cyc]) * 100
        ax.errorbar(
            x,
            est,
            yerr=[est - low, high - est],
            fmt="o",
            color="tab:blue",
            capsize=4,
            label="candidate, estimated (SNIPS, 95% CI)",
        )
        ax.plot(x, [100 * c["true_conversion"] for c in cyc], "x", color="tab:red", ms=9, label="candidate (true)")
        ax.step(
            x,
            [100 * c["champion_true_after"] for c in cyc],
            where="mid",
            color="tab:purple",
            label="champion after the cycle (true)",
        )
        for xi, c in zip(x, cyc, strict=True):
            if c["decision"] == "PROMOTE":
                ax.annotate(
                    "promoted",
                    (xi, 100 * c["true_conversion"]),
                    textcoords="offset points",
                    xytext=(0, 8),
                    ha="center",
                    fontsize=8,
                )
        ax.set_xticks(x)
    ax.set_xlabel("training cycle")
    ax.set_ylabel("conversion rate (%)")
    ax.set_title("rankrl demo: conversion per cycle")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _progress(t0: float, engine: SearchEngine, opts: DemoOptions, registry: ModelRegistry) -> str:
    cycles = _cycles(registry)
    last = cycles[-1] if cycles else None
    last_s = "-" if last is None else f"{last['version']} {last['decision']}"
    return (
        f"[{time.time() - t0:5.0f}s] served {engine.served:,} live searches ({engine.version}) | "
        f"buffer {_buffer_rows(opts.dir / 'buffer'):,} rows | cycles {len(cycles)} (last {last_s}) | "
        f"champion {registry.champion() or 'none'}"
    )


def run_demo(opts: DemoOptions, out: Any = sys.stdout) -> dict[str, Any]:
    """Run the demo and return its summary (also written to dir/results/demo_summary.json)."""
    import shutil

    t0 = time.time()
    deadline = t0 + 60.0 * opts.minutes
    for sub in ("events.jsonl", "buffer", "models", "results", "logs"):
        p = opts.dir / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    opts.dir.mkdir(parents=True, exist_ok=True)
    events = opts.dir / "events.jsonl"
    world = opts.world()
    registry = ModelRegistry(opts.dir / "models")
    say = lambda msg: print(msg, file=out, flush=True)  # noqa: E731

    say(f"== 1/3 {opts.history:,} searches of history from the logging policy (κ={opts.kappa:g})")
    interval = 0.05
    start = time.time() - opts.history * interval
    write_jsonl(
        world,
        str(events),
        opts.history,
        opts.seed,
        exploration=DirichletExploration(opts.kappa),
        start_time=start,
        interval_s=interval,
    )
    children = Children(opts)
    engine = SearchEngine(world, registry, opts.kappa, opts.seed + 1000)
    try:
        children.start(
            "streamer",
            [
                "stream",
                "--source",
                f"file://{events}",
                "--metrics-port",
                str(opts.streamer_metrics_port),
                "--set",
                "streamer.segment_max_age_s=5",
            ],
        )
        while _buffer_rows(opts.dir / "buffer") < opts.history:
            children.check()
            time.sleep(0.5)
        say(f"   streamed into the buffer in {time.time() - t0:.0f} s")
        say(
            f"== 2/3 live traffic at {opts.rate:g} searches/s; trainer every {opts.interval_minutes:g} min, "
            f"{opts.steps_per_cycle} CQL steps per cycle, until {opts.minutes:g} min"
        )
        children.start(
            "trainer",
            [
                "train",
                "--set",
                f"trainer.interval_minutes={opts.interval_minutes}",
                "--set",
                f"trainer.steps_per_cycle={opts.steps_per_cycle}",
                "--set",
                f"trainer.steps_per_epoch={min(100, opts.steps_per_cycle)}",
                "--set",
                f"trainer.holdout_fraction={opts.holdout_fraction}",
                "--set",
                f"trainer.metrics_port={opts.trainer_metrics_port}",
            ],
            env={"OMP_NUM_THREADS": "1"},  # two cores: one for training, one for traffic and the streamer
        )
        last_progress = 0.0
        try:
            while time.time() < deadline and not (opts.cycles and len(registry.versions()) >= opts.cycles):
                tick = time.time()
                n = max(1, int(opts.rate))
                engine.serve(n, events, start_time=tick, interval_s=1.0 / opts.rate)
                children.check()
                if tick - last_progress >= 10:
                    say(_progress(t0, engine, opts, registry))
                    last_progress = tick
                time.sleep(max(0.0, 1.0 - (time.time() - tick)))
        except KeyboardInterrupt:
            say("interrupted: stopping the streamer and the trainer, then the summary")
        say(_progress(t0, engine, opts, registry))
    finally:
        codes = children.stop()
        log.info("demo children stopped: %s", codes)
    say("== 3/3 summary (true values from the simulator)")
    summary = summarise(opts, world, t0, engine.served)
    results = opts.dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    png = plot_summary(summary, results / "demo_conversion.png")
    say(format_summary(summary))
    say(f"\n  summary: {results / 'demo_summary.json'}\n  plot:    {png}\n  logs:    {opts.dir / 'logs'}")
    return summary
