"""A small trained registry: a few CQL steps on simulated traffic, for tests and benchmarks that need a real model."""

from __future__ import annotations

from pathlib import Path

import orjson

from rankrl.sim.events import simulate
from rankrl.sim.world import RankingWorld


def trained_registry(root: str | Path, searches: int = 3000, steps: int = 20, promote: bool = False) -> Path:
    """Simulate `searches` logged searches into `root`/buffer, run one training cycle (`steps` gradient steps,
    no gate: the holdout floor is out of reach) into `root`/models and return the registry's path. The version
    is v0001; `promote` makes it the champion (recorded as forced)."""
    from common.config import load_config
    from common.schema import parse_event
    from deploy.registry import ModelRegistry
    from streamer.writer import BufferWriter
    from trainer.cycle import run_cycle

    root = Path(root)
    writer = BufferWriter(root / "buffer")
    events = (e for _, _, _, es in simulate(RankingWorld(), searches, seed=2) for e in es)
    for j, e in enumerate(events):
        ev = parse_event(orjson.dumps(e))
        writer.append("file:sim", j, j + 1, ev, reward=1.0 if ev.converted else 0.0)
    writer.seal()
    paths = {"buffer_dir": str(root / "buffer"), "registry_dir": str(root / "models")}
    cfg = load_config(environ={}, cli={"paths": paths, "trainer": {"steps_per_cycle": steps, "min_train_rows": 100},
                                       "gate": {"min_holdout_rows": 10**9}})  # fmt: skip
    registry = ModelRegistry(root / "models")
    result = run_cycle(cfg, registry)
    if result.promoted:
        raise AssertionError("the gate cannot promote with an unreachable holdout floor")
    if promote:
        registry.promote("v0001", reason="trained_registry", force=True)
    return root / "models"
