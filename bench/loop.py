"""The learning loop, fast and faithful: how far does the champion walk from the logger towards the best policy?

    python bench/loop.py                                  # 3 seeds, 10 cycles of 150,000 searches, defaults
    python bench/loop.py --seeds 0 --cycles 4 --searches 50000 --set model.conservative_weight=0.2

Each cycle is what production does, minus JSON and daemons: the current champion (its registry `policy.pt`, with
its exploration) serves `--searches` searches of the simulator's world; the logged rows (state, served weights,
their exact log-density, reward, conversion) are appended to a real replay buffer and sealed; then the trainer's
own `run_cycle` runs on it (window, holdout split, warm start, CQL steps, the gate with its shrunk steps, export,
register, promote or hold). The champion's *true* conversion comes from the simulator's closed form, with common
random numbers across cycles.

The ceiling is computed in the same run: the best policy of the trainer's class served with the same exploration,
found by policy gradient on the closed form (REINFORCE through the Dirichlet density; the ranking is piecewise
constant in the weights, so there is no pathwise gradient), for a linear-softmax and a 2x64 MLP-softmax policy over
the standardised state. Per cycle it prints the decision, the champion's true conversion, the candidate's ESS/n and
the fraction of the way from the logger to the better ceiling; at the end the share of cycle time spent training.

`--drift K` changes the world from cycle K on (`--drift-kind inverted`: the trait-fit and brand scores turn
around, x -> 1 - x, as a feature pipeline that changes meaning would): from then on the truth, the logger's value
and the ceiling are those of the changed world (computed in the same run), and the summary gives the cycles of
changed traffic the champion took to get back above that world's logger and to 70% of its way.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from common.config import RankrlConfig, load_config, parse_set_flags
from common.exploration import DirichletExploration
from deploy.registry import ModelRegistry
from deploy.serving import load_policy_mean
from rankrl.sim import Policy, RankingWorld, WorldConfig, buffer_columns
from streamer.encode import EVENT_COLUMNS
from streamer.writer import BufferWriter
from trainer.cycle import run_cycle

log = logging.getLogger("bench.loop")


# ------------------------------------------------------------------------------------------------ the ceiling
class SoftmaxPolicy(torch.nn.Module):
    """Mean weights softmax(f(z(s))) over the standardised state; f linear or a 2x64 MLP."""

    def __init__(self, world: RankingWorld, hidden: int = 0) -> None:
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(world.state_mean, dtype=torch.float64))
        self.register_buffer("sd", torch.as_tensor(world.state_std, dtype=torch.float64))
        if hidden:
            self.f: torch.nn.Module = torch.nn.Sequential(
                torch.nn.Linear(23, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                torch.nn.Linear(hidden, 7),
            ).double()  # fmt: skip
            last = self.f[-1]
            torch.nn.init.zeros_(last.weight)
            with torch.no_grad():
                last.bias.copy_(torch.as_tensor(world.logging_base))
        else:  # starts exactly at the logging policy, which is of this class
            lin = torch.nn.Linear(23, 7).double()
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(world.logging_w.T))
                lin.bias.copy_(torch.as_tensor(world.logging_base))
            self.f = lin

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.f((s - self.mu) / self.sd), dim=-1)

    def as_policy(self) -> Policy:
        def mean(states: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return self(torch.as_tensor(np.asarray(states, dtype=np.float64))).numpy()

        return mean


def fit_ceiling(
    world: RankingWorld, ex: DirichletExploration, hidden: int, iters: int, batch: int, seed: int
) -> SoftmaxPolicy:
    """Maximise E_s E_{a ~ Dir(α(π(s)))} conversion(s, a) by REINFORCE with a per-context leave-one-out baseline."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = world.contexts(100_000, rng)  # drawing contexts costs more than the closed form: draw them once
    pol = SoftmaxPolicy(world, hidden)
    opt = torch.optim.Adam(pol.parameters(), lr=0.02 if not hidden else 0.003)
    k = 4  # action samples per context
    for _ in range(iters):
        ctx = pool.take(rng.integers(0, len(pool), batch))
        mean = pol(torch.as_tensor(ctx.states, dtype=torch.float64))
        alpha = ex.min_alpha + (ex.kappa - 7 * ex.min_alpha) * mean
        dist = torch.distributions.Dirichlet(alpha)
        a = dist.sample((k,))  # [k, batch, 7]
        conv = np.stack([world.expected_outcomes(ctx, a[j].numpy())[0] for j in range(k)])  # [k, batch]
        adv = torch.as_tensor(conv - (conv.sum(0, keepdims=True) - conv) / (k - 1))
        loss = -(adv * dist.log_prob(a)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pol


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class CycleRow:
    cycle: int
    decision: str
    version: str | None
    champion: str | None
    champion_true: float
    candidate_true: float
    ess_fraction: float | None
    fraction: float
    cycle_s: float
    train_s: float
    phases: dict[str, float]


@dataclass
class Regime:
    """A world in force from cycle `start`, with its logger's true value and its ceiling."""

    start: int
    world: RankingWorld
    logger_true: float
    ceiling: float


def run_loop(
    cfg: RankrlConfig, regimes: list[Regime], seed: int, cycles: int, searches: int, truth: int, out: Path,
) -> list[CycleRow]:  # fmt: skip
    ex = DirichletExploration.from_config(cfg.exploration)
    buf, models = out / "buffer", out / "models"
    cfg = load_config(environ={}, base=cfg, cli={"paths": {"buffer_dir": str(buf), "registry_dir": str(models)}})
    writer = BufferWriter(buf, max_rows=searches + 1)
    registry = ModelRegistry(models)
    rng = np.random.default_rng(1000 + seed)
    t0 = time.time() - cycles * searches * 0.05 - 3600
    champion_policy: Policy = regimes[0].world.logging_policy
    rows: list[CycleRow] = []
    for c in range(1, cycles + 1):
        regime = [g for g in regimes if g.start <= c][-1]
        world, logger_true, ceiling = regime.world, regime.logger_true, regime.ceiling
        cols = buffer_columns(world, champion_policy, ex, searches, rng, t0 + (c - 1) * searches * 0.05, c * 10**7)
        assert set(cols) == set(EVENT_COLUMNS)
        offsets = list(range((c - 1) * searches, c * searches))
        writer.append_columns(["sim:0"] * searches, offsets, [o + 1 for o in offsets], cols)
        writer.seal()
        started = time.perf_counter()
        r = run_cycle(cfg, registry)
        cycle_s = time.perf_counter() - started
        champion = registry.champion()
        if champion is not None:
            champion_policy = load_policy_mean(registry.path(champion, "policy.pt"))
        candidate = load_policy_mean(registry.path(r.version, "candidate_policy.pt")) if (
            models / str(r.version) / "candidate_policy.pt").exists() else load_policy_mean(
            registry.path(r.version, "policy.pt"))  # fmt: skip
        champ_true = world.true_value(champion_policy, ex, n_contexts=truth, seed=77).conversion
        cand_true = world.true_value(candidate, ex, n_contexts=truth, seed=77).conversion
        w = r.report.candidate_weights
        diff = r.report.difference
        rows.append(
            CycleRow(
                c, r.decision + (f"@{r.report.promoted_step:g}" if r.report.promoted_step else ""), r.version,
                champion, champ_true, cand_true, None if w is None else w.ess_fraction,
                (champ_true - logger_true) / (ceiling - logger_true), cycle_s, r.train_seconds, r.phase_seconds or {},
            )
        )  # fmt: skip
        row = rows[-1]
        print(
            f"  seed {seed} cycle {c:>2}  {row.decision[:34]:<34} champion {champion or 'logger':>6} "
            f"true {100 * champ_true:6.3f}%  candidate {100 * cand_true:6.3f}%  "
            f"ESS/n {'-' if row.ess_fraction is None else f'{row.ess_fraction:.3f}'}  "
            f"Δ̂ {'-' if diff is None else f'{100 * diff.delta:+.3f}±{100 * diff.se:.3f}pp'}  "
            f"way {100 * row.fraction:5.1f}%  cycle {cycle_s:5.1f}s (training {100 * row.train_s / cycle_s:3.0f}%; "
            + " ".join(f"{k} {v:.1f}" for k, v in row.phases.items() if k != "train")
            + ")",
            flush=True,
        )
    return rows


def ceilings_of(world: RankingWorld, wc: WorldConfig, ex: DirichletExploration, args: argparse.Namespace) -> dict:
    """The best linear- and MLP-softmax policies' true conversion in `world` (cached: they depend only on the world,
    the exploration and the optimiser's settings)."""
    key = f"k{ex.kappa:g}-a{ex.min_alpha:g}-i{args.ceiling_iters}-b{args.ceiling_batch}-t{args.truth_contexts}"
    if wc.inverted_signals:
        key += "-inv" + "".join(map(str, wc.inverted_signals))
    cache = Path(__file__).resolve().parents[1] / ".cache" / "bench" / f"loop-ceiling-{key}.json"
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    ceilings = {}
    for name, hidden in (("linear-softmax", 0), ("2x64 MLP-softmax", 64)):
        pol = fit_ceiling(world, ex, hidden, args.ceiling_iters, args.ceiling_batch, seed=5)
        ceilings[name] = world.true_value(pol.as_policy(), ex, n_contexts=args.truth_contexts, seed=77).conversion
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(ceilings))
    return ceilings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--searches", type=int, default=150_000, help="searches served per cycle")
    p.add_argument("--truth-contexts", type=int, default=40_000)
    p.add_argument("--ceiling-iters", type=int, default=400)
    p.add_argument("--ceiling-batch", type=int, default=4096)
    p.add_argument("--set", action="append", default=[], help="section.field=value for the trainer (repeatable)")
    p.add_argument("--drift", type=int, default=0, help="the world changes from this cycle on (0: never)")
    p.add_argument("--drift-kind", default="inverted", choices=["inverted"], help="how it changes")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)  # TorchScript's deprecation, on every export
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    cfg: RankrlConfig = load_config(environ={}, cli=parse_set_flags(args.set))
    ex = DirichletExploration.from_config(cfg.exploration)
    t0 = time.perf_counter()
    print(f"# bench/loop.py {' '.join(sys.argv[1:])}")
    print(f"# trainer overrides: {args.set or 'none (defaults)'}")
    worlds = [(1, WorldConfig(n_candidates=100))]
    if args.drift:
        worlds.append((args.drift, WorldConfig(n_candidates=100, inverted_signals=(2, 3))))
    regimes = []
    for start, wc in worlds:
        world = RankingWorld(wc)
        logger_true = world.true_value(world.logging_policy, ex, n_contexts=args.truth_contexts, seed=77).conversion
        ceilings = ceilings_of(world, wc, ex, args)
        regimes.append(Regime(start, world, logger_true, max(ceilings.values())))
        print(f"from cycle {start}: logging policy true conversion {100 * logger_true:.3f}%; ceilings at kappa "
              f"{ex.kappa:g}: " + ", ".join(f"{k} {100 * v:.3f}%" for k, v in ceilings.items())
              + f"  ({time.perf_counter() - t0:.0f}s)")  # fmt: skip
    finals = []
    for seed in (int(s) for s in args.seeds.split(",")):
        seed_cfg = load_config(environ={}, base=cfg, cli={"trainer": {"seed": seed}})
        with tempfile.TemporaryDirectory() as tmp:
            rows = run_loop(seed_cfg, regimes, seed, args.cycles, args.searches, args.truth_contexts, Path(tmp))
        worse = [
            (b.cycle, 100 * (b.champion_true - a.champion_true))
            for a, b in itertools.pairwise(rows)
            if b.champion != a.champion and b.champion_true < a.champion_true - 0.0005
        ]
        train_share = sum(r.train_s for r in rows) / sum(r.cycle_s for r in rows)
        finals.append(rows[-1].fraction)
        print(f"  seed {seed}: final {100 * rows[-1].fraction:.1f}% of the way; promotions truly worse than their "
              f"predecessor by > 0.05 pp: {worse or 'none'}; time in training {100 * train_share:.0f}%")  # fmt: skip
        if args.drift:
            after = [r for r in rows if r.cycle >= args.drift]
            back = next((i for i, r in enumerate(after) if r.fraction >= 0), None)
            seventy = next((i for i, r in enumerate(after) if r.fraction >= 0.7), None)
            print(f"  seed {seed}: after the change at cycle {args.drift}, cycles of changed traffic to get back above "
                  f"the new logger: {back + 1 if back is not None else 'not within the run'}; to 70% of the new way: "
                  f"{seventy + 1 if seventy is not None else 'not within the run'}")  # fmt: skip
    print(f"median over seeds: {100 * float(np.median(finals)):.1f}% of the way from the logger to the ceiling")
    print(f"({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
