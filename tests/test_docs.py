"""The README and docs stay in step with the code: every subcommand in the README's table, every exported metric
in docs/operating.md, every number in the README traceable to a results file."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from deploy.service import ServeMetrics
from rankrl.cli import build_parser
from streamer.metrics import StreamerMetrics
from trainer.metrics import RegistryCollector, TrainerMetrics

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_readme_command_table_lists_every_subcommand() -> None:
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `rankrl ([\w-]+)", readme, re.M))
    assert table == subcommands()


def decided_manifest() -> dict:
    import dataclasses

    """A manifest with a real gate report (a quick gate run on simulated traffic): what the registry collector
    exports for the newest version."""

    import numpy as np

    from common.config import GateConfig
    from common.exploration import DirichletExploration
    from rankrl.sim import RankingWorld, logged_holdout, targeted_policy
    from trainer.gate import EvaluationData, PromotionGate

    world, rng = RankingWorld(), np.random.default_rng(0)
    data = EvaluationData.from_arrays(logged_holdout(world, world.contexts(5000, rng), rng))
    gate = PromotionGate(GateConfig(), DirichletExploration())
    report = gate.evaluate(data, targeted_policy(world, 1.0), cross_checks=False).report
    # as if promoted, so that every family is there (the step promoted exists only then)
    report = dataclasses.replace(report, decision="PROMOTE", promoted_step=1.0, policy={"losses": {"critic": 1.0}})
    window = {"train_rows": 1, "holdout_rows": 1, "dropped_non_finite_rows": 0}
    return {"cumulative_steps": 1, "created": 0.0, "data_window": window, "report": report.to_dict()}


def exported_metrics(tmp_path: Path) -> set[str]:
    from trainer.metrics import decision_metrics

    reg = CollectorRegistry()
    StreamerMetrics(reg)
    TrainerMetrics(reg)
    ServeMetrics(reg)
    reg.register(RegistryCollector(tmp_path / "models"))
    # Family names, not samples: a labelled metric with no children yet has no samples.
    suffix = {"counter": "_total", "info": "_info"}
    families = [*reg.collect(), *decision_metrics(decided_manifest())]
    return {family.name + suffix.get(family.type, "") for family in families}


def test_operating_metrics_table_lists_every_exported_metric(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "operating.md").read_text()
    listed = set(re.findall(r"`(rankrl_[a-z_]+)", doc))
    exported = exported_metrics(tmp_path)
    missing = {m for m in exported if m not in listed}
    assert not missing, f"docs/operating.md does not list {sorted(missing)}"
    gone = {m for m in listed if m not in exported and not m.startswith("rankrl_serve_")}  # serve's: a separate test
    assert not gone, f"docs/operating.md lists metrics nothing exports: {sorted(gone)}"


def test_readme_numbers_cite_a_results_file() -> None:
    """A measured number in the README (a percentage, a time, a rate) must sit beside the file that holds it."""
    for i, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if re.search(r"\d+(\.\d+)?\s?(%|ms|µs|events/s)|\d+\.\d+ s\b", line):
            assert "bench/results/" in line, f"README.md:{i}: a number without its source: {line}"


def test_docs_links_resolve() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
