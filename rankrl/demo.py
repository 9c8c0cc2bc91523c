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
from pathlib import Path
from typing import Any

import orjson

from common.exploration import DirichletExploration
from deploy.registry import ModelRegistry
from deploy.serving import ServingPolicy
from rankrl.demo_options import DemoOptions
from rankrl.demo_summary import buffer_rows, cycle_rows, format_summary, plot_summary, summarise
from rankrl.sim import RankingWorld, simulate, write_jsonl

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
        while buffer_rows(opts.dir / "buffer") < opts.history:
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
