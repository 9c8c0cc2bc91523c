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


def exported_metrics(tmp_path: Path) -> set[str]:
    reg = CollectorRegistry()
    StreamerMetrics(reg)
    TrainerMetrics(reg)
    ServeMetrics(reg)
    reg.register(RegistryCollector(tmp_path / "models"))
    # Family names, not samples: a labelled metric with no children yet has no samples.
    suffix = {"counter": "_total", "info": "_info"}
    return {family.name + suffix.get(family.type, "") for family in reg.collect()}


def test_operating_metrics_table_lists_every_exported_metric(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "operating.md").read_text()
    listed = set(re.findall(r"`(rankrl_[a-z_]+)", doc))
    missing = {m for m in exported_metrics(tmp_path) if m not in listed}
    assert not missing, f"docs/operating.md does not list {sorted(missing)}"


def test_readme_numbers_cite_a_results_file() -> None:
    """A measured number in the README (a percentage, a time, a rate) must sit beside the file that holds it."""
    for i, line in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        if re.search(r"\d+(\.\d+)?\s?(%|ms|µs|events/s)|\d+\.\d+ s\b", line):
            assert "bench/results/" in line, f"README.md:{i}: a number without its source: {line}"


def test_docs_links_resolve() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
