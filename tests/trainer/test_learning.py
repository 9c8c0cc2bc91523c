"""The loop learns: a few cycles of the trainer's real `run_cycle` on simulator traffic served by the champion
raise the champion's *true* conversion above the logging policy's, and no promotion is truly worse than the version
it replaced. A change that breaks learning (the learner, the gate, the export, serving the promoted step) fails here.
`bench/loop.py` is the long form of this test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import RankrlConfig, load_config
from common.exploration import DirichletExploration
from deploy.registry import ModelRegistry
from deploy.serving import load_policy_mean
from rankrl.sim import Policy, RankingWorld, WorldConfig, buffer_columns
from streamer.writer import BufferWriter
from trainer.cycle import run_cycle

pytestmark = pytest.mark.slow

SEARCHES = 40_000  # per cycle; the first holdout (30%) clears the gate's 10,000-row floor
# The default learner (conservative weight, temperature, scale augmentation, 64x64), with fewer steps and samples.
FAST = {
    "model": {"n_action_samples": 4},
    "trainer": {"steps_per_cycle": 600, "steps_per_epoch": 300, "window_s": 1e10},
}


def test_a_few_cycles_raise_the_champions_true_conversion(tmp_path: Path) -> None:
    world = RankingWorld(WorldConfig(n_candidates=100))
    cli = {**FAST, "paths": {"buffer_dir": str(tmp_path / "buffer"), "registry_dir": str(tmp_path / "models")}}
    cfg: RankrlConfig = load_config(environ={}, cli=cli)
    ex = DirichletExploration.from_config(cfg.exploration)
    writer, registry = BufferWriter(tmp_path / "buffer", max_rows=SEARCHES + 1), ModelRegistry(tmp_path / "models")
    rng = np.random.default_rng(0)
    policy: Policy = world.logging_policy

    def truth(p: Policy) -> float:
        return world.true_value(p, ex, n_contexts=15_000, seed=77).conversion  # common random numbers

    logger = truth(policy)
    history = [logger]
    for c in range(3):
        cols = buffer_columns(world, policy, ex, SEARCHES, rng, t0=1.7e9 + c * SEARCHES * 0.05, first_id=c * 10**7)
        offsets = list(range(c * SEARCHES, (c + 1) * SEARCHES))
        writer.append_columns(["sim:0"] * SEARCHES, offsets, [o + 1 for o in offsets], cols)
        writer.seal()
        r = run_cycle(cfg, registry)
        if r.promoted:
            champion = registry.champion()
            assert champion is not None
            policy = load_policy_mean(registry.path(champion, "policy.pt"))
            history.append(truth(policy))
            assert history[-1] > history[-2] - 0.0005, f"promotion {champion} is truly worse: {history}"
    assert len(history) > 1, "nothing was promoted in three cycles"
    assert history[-1] > logger + 0.003, f"true conversion per promotion {history}: not clearly above the logger"
