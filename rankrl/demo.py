"""`rankrl demo`: the whole loop on the embedded default (no Kafka), in one process group, for a few minutes.

    this process: the search engine          child: rankrl serve                child: rankrl stream (join)
    simulated searches ──POST /v1/rank/batch──► weights + log_propensity ──► decisions.jsonl ─┐
    users' responses ───POST /v1/outcome (0–5 s later)──────────────────► outcomes.jsonl ─────┴► buffer/
        ▲                                                                                           │
        └── serve reloads the champion ◄── models/ ◄── gate ◄── CQL cycle ◄── child: rankrl train ◄─┘

1. History: `history` searches logged by the simulator's logging policy (the days before rankrl), written as
   the decision service's two logs and joined into the buffer before the trainer starts.
2. Live: `rate` searches per second ranked by `rankrl serve` over HTTP (the engine's fixed weights with
   exploration until there is a champion, then the champion, reloaded without a restart); each user's response
   is reported after a random delay and the streamer joins it to its decision within the attribution window.
   The trainer runs a cycle every `interval_minutes`.
3. Summary: every cycle's decision, its estimated conversion and the simulator's *true* conversion, against the
   logging policy and the simulator's best known policy, and the service's latency as the engine saw it; JSON
   and a PNG of conversion per cycle.

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
from typing import Any

import numpy as np

from common.exploration import DirichletExploration
from deploy.registry import ModelRegistry
from rankrl.demo_options import DemoOptions
from rankrl.demo_summary import buffer_rows, cycle_rows, format_summary, plot_summary, summarise
from rankrl.sim import write_decision_logs
from rankrl.sim.engine import SearchEngine, wait_ready

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


def _progress(t0: float, engine: SearchEngine, opts: DemoOptions, registry: ModelRegistry) -> str:
    cycles = cycle_rows(registry)
    last = cycles[-1] if cycles else None
    last_s = "-" if last is None else f"{last['version']} {last['decision']}"
    return (
        f"[{time.time() - t0:5.0f}s] served {engine.served:,} live searches ({engine.version}) | "
        f"buffer {buffer_rows(opts.dir / 'buffer'):,} rows | cycles {len(cycles)} (last {last_s}) | "
        f"champion {registry.champion() or 'none'}"
    )


def run_demo(opts: DemoOptions, out: Any = sys.stdout) -> dict[str, Any]:
    """Run the demo and return its summary (also written to dir/results/demo_summary.json)."""
    import shutil

    t0 = time.time()
    deadline = t0 + 60.0 * opts.minutes
    for sub in ("decisions.jsonl", "outcomes.jsonl", "buffer", "models", "results", "logs"):
        p = opts.dir / sub
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    opts.dir.mkdir(parents=True, exist_ok=True)
    decisions, outcomes = opts.dir / "decisions.jsonl", opts.dir / "outcomes.jsonl"
    world = opts.world()
    registry = ModelRegistry(opts.dir / "models")
    say = lambda msg: print(msg, file=out, flush=True)  # noqa: E731

    say(f"== 1/3 {opts.history:,} searches of history from the logging policy (κ={opts.kappa:g}), logged as the "
        "decision service logs them")  # fmt: skip
    interval = 0.05
    write_decision_logs(
        world,
        str(decisions),
        str(outcomes),
        opts.history,
        opts.seed,
        max_delay_s=opts.max_outcome_delay_s,
        exploration=DirichletExploration(opts.kappa),
        start_time=time.time() - opts.history * interval,
        interval_s=interval,
    )
    # Before the first champion the service serves the engine's fixed weights (with exploration): the logger's
    # average weights stand in for them.
    fixed = world.logging_policy(world.contexts(10_000, np.random.default_rng(opts.seed + 5)).states).mean(axis=0)
    children = Children(opts)
    url = f"http://127.0.0.1:{opts.serve_port}"
    engine = SearchEngine(world, url, opts.seed + 1000, opts.max_outcome_delay_s)
    try:
        children.start(
            "streamer",
            [
                "stream",
                "--decisions", f"file://{decisions}",
                "--outcomes", f"file://{outcomes}",
                "--metrics-port", str(opts.streamer_metrics_port),
                "--set", "streamer.segment_max_age_s=5",
                "--set", f"join.window_s={opts.join_window_s}",
                "--set", f"join.lateness_s={opts.join_lateness_s}",
            ],
        )  # fmt: skip
        while buffer_rows(opts.dir / "buffer") < opts.history:
            children.check()
            time.sleep(0.5)
        say(f"   joined and streamed into the buffer in {time.time() - t0:.0f} s")
        children.start(
            "serve",
            [
                "serve",
                "--port", str(opts.serve_port),
                "--decisions", f"file://{decisions}",
                "--outcomes", f"file://{outcomes}",
                "--set", "serve.default_weights=" + ",".join(f"{w:.6f}" for w in fixed),
            ],
        )  # fmt: skip
        wait_ready(url, check=children.check)  # a child that died is reported at once
        say(
            f"== 2/3 live traffic at {opts.rate:g} searches/s through rankrl serve ({url}), outcomes reported up to "
            f"{opts.max_outcome_delay_s:g} s later and joined within {opts.join_window_s:g} s; trainer every "
            f"{opts.interval_minutes:g} min, {opts.steps_per_cycle} CQL steps per cycle, until {opts.minutes:g} min"
        )
        children.start(
            "trainer",
            [
                "train",
                "--set", f"trainer.interval_minutes={opts.interval_minutes}",
                "--set", f"trainer.steps_per_cycle={opts.steps_per_cycle}",
                "--set", f"trainer.steps_per_epoch={min(100, opts.steps_per_cycle)}",
                "--set", f"trainer.holdout_fraction={opts.holdout_fraction}",
                "--set", f"trainer.metrics_port={opts.trainer_metrics_port}",
            ],
            env={"OMP_NUM_THREADS": "1"},  # two cores: one for training, one for traffic, serving and streaming
        )  # fmt: skip
        last_progress = 0.0
        try:
            while time.time() < deadline and not (opts.cycles and len(registry.versions()) >= opts.cycles):
                tick = time.time()
                engine.one_second(opts.rate)
                children.check()
                if tick - last_progress >= 10:
                    say(_progress(t0, engine, opts, registry))
                    last_progress = tick
        except KeyboardInterrupt:
            say("interrupted: stopping the service, the streamer and the trainer, then the summary")
        engine.report_due(float("inf"))  # the search engine reports what it still owes before it stops
        say(_progress(t0, engine, opts, registry))
    finally:
        codes = children.stop()
        log.info("demo children stopped: %s", codes)
    say("== 3/3 summary (true values from the simulator)")
    summary = summarise(opts, world, t0, engine.served)
    summary["service_latency"] = engine.latency()
    summary["outcomes_reported"] = engine.reported
    results = opts.dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    png = plot_summary(summary, results / "demo_conversion.png")
    say(format_summary(summary))
    say(f"\n  summary: {results / 'demo_summary.json'}\n  plot:    {png}\n  logs:    {opts.dir / 'logs'}")
    return summary
