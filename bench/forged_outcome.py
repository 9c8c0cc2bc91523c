"""How far can one forged outcome move what the learner sees? A client with a valid `outcome` token reports a
purchase for a search that bought nothing (the worst single report the plausibility limits let through).

    python bench/forged_outcome.py [--holdout 30000] [--seed 0]   # writes bench/results/forged_outcome.txt

1. The gate's estimate: the paired self-normalised IPS difference Δ = V(candidate) − V(champion) of conversion on
   a simulated holdout (logging: Dirichlet exploration around the logger's mean, as serve does; the candidate a
   targeted policy of the simulator). One forged purchase on row j moves V(p) by w_j(p)/Σw(p) (1 − c_j); the
   worst row over the holdout is the largest change of Δ one report can cause. The gate refuses any holdout
   whose largest weight share exceeds `gate.max_weight_share` (0.01), which bounds it whatever the data.
2. The reward CQL learns from: the largest reward one report can claim within the plausibility limits
   (`join.max_purchased_ranks` purchases at the top ranks, each priced at the revenue cap), beside the median
   converted reward of the simulated traffic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import RankrlConfig
from common.exploration import DirichletExploration
from common.reward import REVENUE_CAP, RewardConfig
from rankrl.sim.policies import targeted_policy
from rankrl.sim.world import RankingWorld


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--holdout", type=int, default=30_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "forged_outcome.txt"))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    world = RankingWorld()
    ex = DirichletExploration()
    ctx = world.contexts(args.holdout, rng)
    logger = world.logging_policy(ctx.states)
    served, lp0 = ex.sample(logger, rng)
    conv, _ = world.expected_outcomes(ctx, served)
    c = (rng.random(args.holdout) < conv).astype(float)
    lines = [
        f"# python bench/forged_outcome.py --holdout {args.holdout} --seed {args.seed}",
        "",
        f"holdout {args.holdout} searches logged around the simulator's logger, conversion {c.mean():.4f}",
        "",
        "candidate (targeted, beta) | Δ (SNIPS) | largest change of Δ by one forged purchase | largest share",
    ]
    for beta in (0.5, 1.0, 2.0):
        cand = targeted_policy(world, beta)(ctx.states)
        w_c = np.exp(ex.log_density(served, cand) - lp0)
        share_c = w_c / w_c.sum()
        share_0 = np.full(args.holdout, 1 / args.holdout)  # the champion is the logger: every weight is 1
        delta = float((share_c * c).sum() - (share_0 * c).sum())
        moved = float((np.abs(share_c - share_0) * (1 - c)).max())
        lines.append(f"{beta:26.1f} | {delta:+.5f} | {moved:.6f} | {share_c.max():.6f}")
    cfg = RankrlConfig()
    rc: RewardConfig = cfg.reward
    k = cfg.join.max_purchased_ranks
    worst = sum(rc.position_weight(r) for r in range(1, k + 1)) * rc.action_values["purchase"] * REVENUE_CAP
    lines += [
        "",
        f"largest reward of one report within the limits (join.max_purchased_ranks={k}): {worst:.1f}",
        f"one purchase at rank 1 priced at the cap: {rc.action_values['purchase'] * REVENUE_CAP:.1f}",
        "(the original pipeline's reward; the gate judges conversion, which one report moves by one row)",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
