"""The options of `rankrl demo` and their defaults (kept apart from rankrl/demo.py so `rankrl --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import ExplorationConfig, TrainerConfig

if TYPE_CHECKING:
    from rankrl.sim import RankingWorld


@dataclass
class DemoOptions:
    minutes: float = 5.0  # wall time of the whole demo, history included
    cycles: int = 0  # stop once this many training cycles are registered (0 = run until `minutes`)
    dir: Path = Path("data/demo")
    history: int = 200_000  # logged searches before rankrl starts (about 3 h of traffic at 20/s)
    rate: float = 200.0  # live searches per second, ranked through rankrl serve
    serve_port: int = 8180  # where the demo's `rankrl serve` listens (loopback)
    max_outcome_delay_s: float = 5.0  # each outcome is reported up to this long after its search
    join_window_s: float = 20.0  # the attribution window (join.window_s): short, so live rows reach the buffer soon
    join_lateness_s: float = 5.0
    interval_minutes: float = 1.0  # trainer schedule
    steps_per_cycle: int = TrainerConfig.steps_per_cycle
    holdout_fraction: float = 0.5
    kappa: float = ExplorationConfig.kappa
    n_candidates: int = 100  # candidates per search (the top 10 are shown)
    seed: int = 0
    streamer_metrics_port: int = 9108  # 0 = none
    trainer_metrics_port: int = 9109
    truth_contexts: int = 20_000  # Monte Carlo contexts per true-value evaluation
    extra_set: list[str] = field(default_factory=list)  # more --set flags for both children

    def world(self) -> RankingWorld:
        from rankrl.sim import RankingWorld, WorldConfig

        return RankingWorld(WorldConfig(n_candidates=self.n_candidates))
