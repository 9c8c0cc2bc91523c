"""The trainer's data path against d3rlpy's MDPDataset: build time, memory, batch sampling, gradient steps/s.

    python bench/trainer_data.py                      # 100k and 1M rows both ways, 10M rows for rankrl only
    python bench/trainer_data.py --mdp-max 10000000   # also MDPDataset at 10M (~5 GB, ~1 min)

rankrl: N rows are sealed into a real buffer segment, then timed from `open_buffer().load()` (memory-mapped)
to contiguous training arrays. MDPDataset: the same arrays with every search a terminal one-step episode.
Memory is the tracemalloc peak of the build (numpy reports its buffers to tracemalloc), against the raw
bytes of states + actions + rewards. Steps/s: CQL with the same network (256, 256) and batch (256), CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import d3rlpy

from common.buffer import COLUMNS, BufferDir, open_buffer, write_segment
from common.config import load_config
from trainer.cycle import new_cql
from trainer.data import ArraySampler, TrainingArrays


def fake_columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cols = {}
    for name, (dtype, shape) in COLUMNS.items():
        cols[name] = np.zeros((n, *shape), dtype=dtype)
    cols["state"][:] = rng.standard_normal((n, 23), dtype=np.float32)
    a = rng.random((n, 7), dtype=np.float32)
    cols["action"][:] = a / a.sum(axis=1, keepdims=True)
    cols["reward"][:] = rng.standard_normal(n, dtype=np.float32)
    cols["event_time"][:] = np.arange(n, dtype=np.float64)
    return cols


def measure(fn):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return out, dt, peak


def build_mdp(states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n: int) -> object:
    return d3rlpy.dataset.MDPDataset(
        observations=states,
        actions=actions,
        rewards=rewards,
        terminals=np.ones(n, dtype=np.float32),
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )


def sample_ms(sample, reps: int) -> float:  # type: ignore[no-untyped-def]
    sample()
    t0 = time.perf_counter()
    for _ in range(reps):
        sample()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--mdp-max", type=int, default=1_000_000, help="largest size to build an MDPDataset for")
    ap.add_argument("--steps", type=int, default=150, help="gradient steps timed per side")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| rows | side | build s | memory / raw bytes | sample 256 ms |")
    print("|---|---|---|---|---|")
    keep = None
    for n in (int(s) for s in args.sizes.split(",")):
        raw = n * (23 + 7 + 1) * 4
        with tempfile.TemporaryDirectory() as tmp:
            d = BufferDir(tmp, create=True)
            cols = fake_columns(n, rng)
            write_segment(
                d.segments_dir / "seg-bench.rseg",
                cols,
                {
                    "min_time": 0.0,
                    "max_time": float(n),
                    "sealed_at": time.time(),
                    "sources": ["x"],
                    "positions": {"x": n},
                },
            )
            with d.locked():
                d.recover()
            del cols
            data, dt, peak = measure(lambda tmp=tmp: TrainingArrays.from_window(open_buffer(tmp).load()))
            sampler = ArraySampler(data)
            ms = sample_ms(lambda s=sampler: s.sample(256), 2000)
            print(f"| {n:,} | rankrl arrays | {dt:.2f} | {peak / raw:.2f} | {ms:.3f} |", flush=True)
            if n == 1_000_000 or keep is None:
                keep = data
            if n <= args.mdp_max:
                states, actions, rewards = data.states.copy(), data.actions.copy(), data.rewards.copy()
                mdp, dt, peak = measure(lambda s=states, a=actions, r=rewards, k=n: build_mdp(s, a, r, k))
                ms = sample_ms(lambda m=mdp: m.sample_transition_batch(256), 200)
                print(f"| {n:,} | d3rlpy MDPDataset | {dt:.2f} | {peak / raw:.2f} | {ms:.3f} |", flush=True)
                del mdp
    assert keep is not None
    # Gradient steps per second, same network and batch, on 100k rows.
    data = TrainingArrays(keep.states[:100_000].copy(), keep.actions[:100_000].copy(), keep.rewards[:100_000].copy())
    cfg = load_config(environ={})
    algo = new_cql(cfg, data, "cpu:0")
    sampler = ArraySampler(data)
    for _ in range(10):
        algo.update(sampler.sample(256))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        algo.update(sampler.sample(256))
    ours = args.steps / (time.perf_counter() - t0)
    mdp = d3rlpy.dataset.MDPDataset(
        observations=data.states,
        actions=data.actions,
        rewards=data.rewards,
        terminals=np.ones(len(data), dtype=np.float32),
        action_space=d3rlpy.constants.ActionSpace.CONTINUOUS,
    )
    plain = new_cql(cfg, data, "cpu:0")
    t0 = time.perf_counter()
    plain.fit(
        mdp,
        n_steps=args.steps,
        n_steps_per_epoch=args.steps,
        show_progress=False,
        logger_adapter=d3rlpy.logging.NoopAdapterFactory(),
        save_interval=10**9,
    )
    theirs = args.steps / (time.perf_counter() - t0)
    print(
        f"\ngradient steps/s (CQL 256x256, batch 256, CPU): rankrl {ours:.1f}, d3rlpy fit on MDPDataset "
        f"{theirs:.1f}, ratio {ours / theirs:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
