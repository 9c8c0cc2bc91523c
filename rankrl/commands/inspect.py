"""Read-only inspection: `evaluate` (the trainer's gate on any two models) and `config` (every effective value)."""

from __future__ import annotations

import argparse
import logging

from common.progress import add_progress_flag, progress_bar
from rankrl.commands import add_config_flags, config_from

log = logging.getLogger("rankrl")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("evaluate", help="gate a candidate model against the champion on the buffer's holdout")
    add_config_flags(s)
    s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.add_argument("--candidate", required=True, help="registry version (v0003) or a .d3 file")
    s.add_argument(
        "--champion",
        help="registry version or .d3 file, or 'logging' for the logging policy (default: the registry's champion, "
        "else the logging policy)",
    )
    s.add_argument("--holdout-fraction", type=float, help="newest share of the window to evaluate on")
    s.add_argument("--out", help="folder for evaluation_report.json and evaluation.png (paths.results_dir)")
    s.add_argument(
        "--json",
        action="store_true",
        help="print the gate's report as one JSON document (the file's content) instead of the table",
    )
    add_progress_flag(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("config", help="print the effective configuration, every section and field")
    add_config_flags(s)
    s.set_defaults(func=cmd_config)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Gate a candidate against the champion (or the logging policy) on the buffer's newest rows."""
    from pathlib import Path

    from trainer.evaluate import EvaluationError, evaluate_models, format_report, write_outputs

    cfg = config_from(args, {"paths": {"buffer_dir": args.buffer, "registry_dir": args.models}})
    try:
        with progress_bar(args.progress, unit="replicate", desc="bootstrap") as bar:
            decision = evaluate_models(cfg, args.candidate, args.champion, args.holdout_fraction, bar.update)
    except EvaluationError as e:
        log.error("evaluate: %s", e)
        return 1
    j, p = write_outputs(decision.report, Path(args.out or cfg.paths.results_dir))
    if args.json:
        print(j.read_text())
    else:
        print(format_report(decision.report))
        print(f"report: {j}\nplot:   {p}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective configuration (defaults < --config file < RANKRL_* < --set), secrets masked."""
    from common.config import describe

    for line in describe(config_from(args)):
        print(line)
    return 0
