"""End-to-end quality: does the full loop make the served policy truly better, and what does warm start save?

    python bench/learning_curve.py                     # 12-minute loop, then warm vs cold (about 20 min on 2 cores)
    python bench/learning_curve.py --minutes 20 --warm-cold-steps 2000

1. The loop: `rankrl demo` (simulated history and live traffic served by the current champion -> file source ->
   streamer -> buffer -> scheduled trainer with the gate), then per cycle the champion's *true* conversion (the
   simulator's closed form, served with exploration) against the logging policy's and the best known policy's.
2. Warm vs cold start, on the loop's final buffer and its train/holdout split: CQL warm-started from the first
   registered version (what the trainer does every cycle) and CQL from scratch, both trained on the same rows.
   Every `--eval-every` steps: the SNIPS conversion estimate on the holdout (the gate's estimator, same rows for
   both: a paired comparison) and the true conversion. Printed: the steps cold start needs to reach the value
   warm start begins with, and both curves.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from common.buffer import open_buffer
from common.config import load_config
from common.exploration import DirichletExploration
from common.ope import estimate
from deploy.registry import ModelRegistry
from rankrl.demo import run_demo
from rankrl.demo_options import DemoOptions
from trainer.cycle import load_cql, new_cql, policy_mean
from trainer.data import ArraySampler, TrainingArrays


def loop_table(s: dict) -> None:
    lo, best = s["logging_true_conversion"], s["best_known_true_conversion"]
    print("\n== per cycle: true conversion (simulator), served with exploration")
    print("(version: the promoted step as served, or the full candidate the gate held)")
    print(f"{'cycle':>5} {'steps':>6} {'decision':<24} {'version':>9} {'champion':>9} {'logging':>8} {'best':>7}")
    for i, c in enumerate(s["cycles"], 1):
        dec = (c["decision"] or "-") + (f"@{c['promoted_step']:g}" if c.get("promoted_step") else "")
        if c["reasons"]:
            dec += ":" + ",".join(c["reasons"])
        print(
            f"{i:>5} {c['cumulative_steps'] or 0:>6} {dec[:24]:<24} {100 * c['true_conversion']:>8.2f}% "
            f"{100 * c['champion_true_after']:>8.2f}% {100 * lo:>7.2f}% {100 * best:>6.2f}%"
        )
    champ = s["champion_true_conversion"]
    if champ is not None:
        gap = (champ - lo) / (best - lo) if best > lo else float("nan")
        print(
            f"final champion {s['champion']}: {100 * champ:.2f}% true, {100 * (champ / lo - 1):+.1f}% vs logging, "
            f"{100 * gap:.0f}% of the way to the best known policy"
        )


def warm_vs_cold(opts: DemoOptions, steps: int, every: int) -> None:
    cfg = load_config(None)
    window = open_buffer(opts.dir / "buffer").load(window=cfg.trainer.window_s)
    order = np.argsort(window.column("event_time"), kind="stable")
    n_hold = round(window.rows * opts.holdout_fraction)
    tr_idx, ho_idx = np.sort(order[: window.rows - n_hold]), np.sort(order[window.rows - n_hold :])
    train = TrainingArrays.from_window(window, tr_idx)
    states = np.asarray(window.column("state")[ho_idx], dtype=np.float32)
    actions = np.asarray(window.column("action")[ho_idx], dtype=np.float64)
    logp = np.asarray(window.column("log_propensity")[ho_idx], dtype=np.float64)
    conv = np.asarray(window.column("converted")[ho_idx], dtype=np.float64)
    ex = DirichletExploration(opts.kappa)
    world = opts.world()

    def values(algo: object) -> tuple[float, float]:
        mean = policy_mean(algo)
        w = np.exp(ex.log_density(actions, mean(states)) - logp)
        truth = world.true_value(mean, ex, n_contexts=opts.truth_contexts, seed=opts.seed + 999).conversion
        return estimate(conv, w, "snips").value, truth

    registry = ModelRegistry(opts.dir / "models")
    first = registry.versions()[0]
    parent_steps = int(registry.manifest(first).get("cumulative_steps", 0))
    runs = {
        "warm": load_cql(registry.path(first, "model.d3"), "cpu:0"),
        "cold": new_cql(cfg, train, "cpu:0", seed=1),
    }
    curves: dict[str, list[tuple[int, float, float, float]]] = {}
    for name, algo in runs.items():
        sampler = ArraySampler(train, seed=1)
        t0 = time.perf_counter()
        curve = [(0, *values(algo), 0.0)]
        for done in range(every, steps + 1, every):
            for _ in range(every):
                algo.update(sampler.sample(algo.config.batch_size))
            curve.append((done, *values(algo), time.perf_counter() - t0))
            print(
                f"  {name} {done:>5} steps: holdout SNIPS {100 * curve[-1][1]:.3f}%  true {100 * curve[-1][2]:.3f}%",
                flush=True,
            )
        curves[name] = curve

    print(
        f"\n== warm ({first}, {parent_steps} steps on older rows) vs cold start; {len(train):,} training rows, "
        f"{len(ho_idx):,} holdout rows"
    )
    print(f"{'steps':>6} {'warm SNIPS':>11} {'cold SNIPS':>11} {'warm true':>10} {'cold true':>10}")
    for (k, ws, wt, _), (_, cs, ct, _) in zip(curves["warm"], curves["cold"], strict=True):
        print(f"{k:>6} {100 * ws:>10.3f}% {100 * cs:>10.3f}% {100 * wt:>9.3f}% {100 * ct:>9.3f}%")
    for label, col in (("holdout SNIPS", 1), ("true", 2)):
        target = curves["warm"][0][col]
        cold_hit = next((k for k, *v in curves["cold"] if v[col - 1] >= target), None)
        warm_hit = next((k for k, *v in curves["warm"] if v[col - 1] >= target), None)
        print(
            f"to reach the warm start's initial {label} conversion {100 * target:.3f}%: warm {warm_hit} steps, "
            f"cold {cold_hit if cold_hit is not None else f'not within {steps}'} steps"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--dir", default="data/bench-learning-curve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-cold-steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=150)
    a = p.parse_args()
    torch.set_num_threads(1)
    opts = DemoOptions(minutes=a.minutes, dir=Path(a.dir), seed=a.seed, streamer_metrics_port=0, trainer_metrics_port=0)
    summary = run_demo(opts)
    loop_table(summary)
    if summary["cycles"]:
        warm_vs_cold(opts, a.warm_cold_steps, a.eval_every)


if __name__ == "__main__":
    main()
