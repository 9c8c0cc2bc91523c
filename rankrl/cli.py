"""The `rankrl` command line: one small function per subcommand; each imports its package lazily.

Exit codes: 0 success, 1 the command ran and failed (its message says why), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from common.config import ConfigError, RankrlConfig, load_config, parse_set_flags

if TYPE_CHECKING:
    from deploy.registry import ModelRegistry

log = logging.getLogger("rankrl")


def _setup_logging(level: str, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        handlers=handlers,
        force=True,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write simulated searches logged by the simulator's stochastic logging policy."""
    from common.exploration import DirichletExploration
    from rankrl.sim import RankingWorld, WorldConfig, personalised_policy, write_jsonl

    world = RankingWorld(WorldConfig(), world_seed=args.world_seed)
    policy = personalised_policy if args.policy == "personalised" else None
    t0 = time.perf_counter()
    n = write_jsonl(
        world,
        args.out,
        args.events,
        args.seed,
        policy=policy,
        exploration=DirichletExploration(kappa=args.kappa),
        log_propensity=not args.no_propensity,
    )
    dt = time.perf_counter() - t0
    log.info("simulated events=%d out=%s seconds=%.2f events_per_s=%.0f", n, args.out, dt, n / dt)
    return 0


def _config(args: argparse.Namespace, extra: dict[str, dict[str, object]] | None = None) -> RankrlConfig:
    """TOML file (--config), then RANKRL_* environment, then --set flags and the subcommand's own flags."""
    cli: dict[str, dict[str, object]] = dict(parse_set_flags(getattr(args, "set", None) or []))
    for section, values in (extra or {}).items():
        cli.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    cfg: RankrlConfig = load_config(getattr(args, "config", None), cli=cli)
    return cfg


def cmd_stream(args: argparse.Namespace) -> int:
    """Run the streamer daemon until SIGTERM/SIGINT (or until idle with --stop-when-idle)."""
    from streamer.daemon import run_streamer
    from streamer.loop import StreamerStopped
    from streamer.sources import FatalSourceError

    cfg = _config(
        args,
        {
            "streamer": {"source": args.source, "metrics_port": args.metrics_port, "group_id": args.group_id},
            "paths": {"buffer_dir": args.buffer},
        },
    )
    try:
        return run_streamer(cfg, stop_when_idle_s=args.stop_when_idle)
    except (FatalSourceError, StreamerStopped) as e:
        log.error("streamer stopped: %s", e)
        return 1


def cmd_train(args: argparse.Namespace) -> int:
    """Run the trainer daemon (APScheduler), or one cycle with --once."""
    from trainer.daemon import run_trainer

    cfg = _config(args, {"paths": {"buffer_dir": args.buffer, "registry_dir": args.models}})
    return run_trainer(cfg, once=args.once, max_cycles=args.max_cycles)


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from deploy.registry import ModelRegistry

    cfg = _config(args, {"paths": {"registry_dir": args.models}})
    return ModelRegistry(cfg.paths.registry_dir)


def _fmt(x: object, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def cmd_models(args: argparse.Namespace) -> int:
    """A table of the registered versions."""
    from deploy.registry import report_of

    reg = _registry(args)
    champion = reg.champion()
    rows = [("version", "parent", "created", "steps", "cand. conv", "LCB Δ", "gate", "status")]
    for v in reg.versions():
        m = reg.manifest(v)
        r = report_of(m)
        status = "champion" if v == champion else ("pinned" if (reg.root / v / "PINNED").exists() else "")
        rows.append(
            (
                v,
                m.get("parent") or "-",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(m["created"])),
                str(m.get("cumulative_steps", "-")),
                _fmt(None if r is None or r.candidate is None else r.candidate.snips_conversion.value),
                _fmt(None if r is None or r.difference is None else r.difference.lcb, "+.5f"),
                "-" if r is None else r.decision + ("" if not r.reasons else ":" + ",".join(r.reasons)[:40]),
                status,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Champion, last cycle and its decision, buffer rows and age."""
    from common.buffer import BufferFormatError, open_buffer
    from deploy.registry import report_of

    reg = _registry(args)
    cfg = _config(args, {"paths": {"buffer_dir": args.buffer}})
    print(f"champion:    {reg.champion() or 'none (the logging policy serves)'}")
    last = reg.latest()
    if last:
        r = report_of(reg.manifest(last))
        verdict = "-" if r is None else f"{r.decision} {', '.join(r.reasons)}"
        print(f"last cycle:  {last} -> {verdict}".rstrip())
    else:
        print("last cycle:  none yet")
    try:
        st = open_buffer(cfg.paths.buffer_dir).stats()
        age = "-" if st["newest_event_time"] is None else f"{time.time() - st['newest_event_time']:.0f}s"
        print(
            f"buffer:      {st['rows']} rows in {st['segments']} segments, {st['bytes'] / 2**20:.1f} MiB, "
            f"newest event {age} ago"
        )
    except BufferFormatError as e:
        print(f"buffer:      {e}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from deploy.registry import RegistryError

    reg = _registry(args)
    try:
        previous = reg.promote(args.version, reason=args.reason, force=args.force)
    except RegistryError as e:
        log.error("%s", e)
        return 1
    print(f"promoted {args.version} (was {previous or 'none'})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from deploy.registry import RegistryError

    reg = _registry(args)
    try:
        previous, to = reg.rollback(reason=args.reason, to=args.to)
    except RegistryError as e:
        log.error("%s", e)
        return 1
    print(f"rolled back to {to} (was {previous or 'none'})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Gate a candidate against the champion (or the logging policy) on the buffer's newest rows."""
    from pathlib import Path

    from trainer.evaluate import EvaluationError, evaluate_models, format_report, write_outputs

    cfg = _config(args, {"paths": {"buffer_dir": args.buffer, "registry_dir": args.models}})
    try:
        decision = evaluate_models(cfg, args.candidate, args.champion, args.holdout_fraction)
    except EvaluationError as e:
        log.error("evaluate: %s", e)
        return 1
    print(format_report(decision.report))
    j, p = write_outputs(decision.report, Path(args.out or cfg.paths.results_dir))
    print(f"report: {j}\nplot:   {p}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """The original train.py: train CQL once from a JSONL file and evaluate it on a test split."""
    from trainer.fit import BadLogLine, FitOptions, fit

    model = {
        "batch_size": args.batch_size,
        "actor_learning_rate": args.actor_lr,
        "critic_learning_rate": args.critic_lr,
        "conservative_weight": args.conservative_weight,
        "n_epochs": args.epochs,
    }
    cfg = _config(args, {"model": model})
    opts = FitOptions(
        input_logs=args.input_logs,
        output_model=args.output_model,
        epochs=cfg.model.n_epochs,
        steps_per_epoch=args.steps_per_epoch,
        test_split=args.test_split,
        val_split=args.val_split,
        skip_reward_computation=args.skip_reward_computation,
        save_processed_logs=args.save_processed_logs,
        no_normalize=args.no_normalize,
        results_path=args.results,
        on_bad_line=args.on_bad_line,
        device=args.device,
    )
    try:
        results = fit(opts, cfg)
    except (BadLogLine, FileNotFoundError) as e:
        log.error("%s", e)
        return 1
    m = results["test_metrics"]
    print(f"model: {opts.output_model}\nresults: {opts.results_path}")
    print(f"test: conversion {m['conversion_rate']:.4f}  MRR {m['mrr']:.4f}  ", end="")
    print(f"revenue/search {m['revenue_per_session']:.2f}")
    snips = results["counterfactual"].get("snips_conversion")
    if snips:
        print(f"policy (counterfactual SNIPS): {snips['value']:.4f} [{snips['ci_low']:.4f}, {snips['ci_high']:.4f}]")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on the embedded default: simulated traffic -> streamer -> scheduled trainer -> champion."""
    from pathlib import Path

    from rankrl.demo import run_demo
    from rankrl.demo_options import DemoOptions

    opts = DemoOptions(
        minutes=args.minutes,
        cycles=args.cycles,
        dir=Path(args.dir),
        history=args.history,
        rate=args.rate,
        interval_minutes=args.interval_minutes,
        steps_per_cycle=args.steps_per_cycle,
        seed=args.seed,
        streamer_metrics_port=args.streamer_metrics_port,
        trainer_metrics_port=args.trainer_metrics_port,
    )
    try:
        summary = run_demo(opts)
    except RuntimeError as e:
        log.error("demo failed: %s", e)
        return 1
    return 0 if summary["cycles"] else 1


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective configuration (defaults < --config file < RANKRL_* < --set), secrets masked."""
    from common.config import describe

    for line in describe(_config(args)):
        print(line)
    return 0


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one configuration value (repeatable); wins over the file and RANKRL_* variables",
    )


def build_parser() -> argparse.ArgumentParser:
    from rankrl.demo_options import DemoOptions as DemoDefaults

    p = argparse.ArgumentParser(
        prog="rankrl",
        description="Keep a search-ranking policy learning from live traffic (see README.md).",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="write simulated search-log events (JSONL) from the ground-truth world")
    s.add_argument("--events", type=int, default=10_000, help="number of searches (default 10000)")
    s.add_argument("--out", required=True, help="output JSONL file")
    s.add_argument("--seed", type=int, default=0, help="traffic seed (default 0)")
    s.add_argument("--world-seed", type=int, default=7, help="seed of the world's hidden parameters (default 7)")
    s.add_argument("--kappa", type=float, default=20.0, help="exploration concentration (default 20)")
    s.add_argument(
        "--policy",
        choices=["logging", "personalised"],
        default="logging",
        help="mean policy that serves the traffic (default: the simulator's logging policy)",
    )
    s.add_argument("--no-propensity", action="store_true", help="omit log_propensity from the events")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("fit", help="the batch path of the original train.py: train once from a JSONL file")
    _add_config_flags(s)
    s.add_argument("--input_logs", default="data/events.jsonl", help="JSONL search logs (default data/events.jsonl)")
    s.add_argument("--output_model", default="models/cql_policy.d3", help="where to save the model")
    s.add_argument("--epochs", type=int, help="training epochs (default 100)")
    s.add_argument("--steps_per_epoch", type=int, help="gradient steps per epoch (default: one pass over the rows)")
    s.add_argument("--batch_size", type=int, help="batch size (default 256)")
    s.add_argument("--test_split", type=float, default=0.2, help="share of logs held out for the test (0.2)")
    s.add_argument("--val_split", type=float, default=0.2, help="share of the rest used for validation (0.2)")
    s.add_argument("--actor_lr", type=float, help="actor learning rate (3e-4)")
    s.add_argument("--critic_lr", type=float, help="critic learning rate (3e-4)")
    s.add_argument("--conservative_weight", type=float, help="CQL alpha (5.0)")
    s.add_argument("--skip_reward_computation", action="store_true", help="use the reward already in each log")
    s.add_argument("--save_processed_logs", action="store_true", help="write data/processed_logs.jsonl")
    s.add_argument("--no_normalize", action="store_true", help="do not standardise the state features")
    s.add_argument("--log_level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=argparse.SUPPRESS)
    s.add_argument("--log_file", help="also write the log to this file")
    s.add_argument(
        "--on_bad_line",
        choices=["skip", "fail"],
        default="skip",
        help="a line that is not a valid event: report it and skip it, or fail the run",
    )
    s.add_argument("--results", default="results/training_results.json", help="where to write the results")
    s.add_argument("--device", default="auto", help="cpu, cuda:0, or auto (default)")
    s.set_defaults(func=cmd_fit)

    d = DemoDefaults()
    s = sub.add_parser(
        "demo",
        help="the whole loop in one process group: simulated traffic, streamer, scheduled trainer, gate, summary",
        description="Simulate a logging policy's history, stream it and live traffic (served by the current "
        "champion) into the buffer, train and gate on a schedule, and print each cycle's estimated and true "
        "conversion. No Kafka needed.",
    )
    s.add_argument("--minutes", type=float, default=d.minutes, help=f"total wall time (default {d.minutes:g})")
    s.add_argument("--cycles", type=int, default=d.cycles, help="stop earlier, once this many cycles are registered")
    s.add_argument("--dir", default=str(d.dir), help=f"working folder, replaced on each run (default {d.dir})")
    s.add_argument("--history", type=int, default=d.history, help=f"searches logged before rankrl starts ({d.history})")
    s.add_argument("--rate", type=float, default=d.rate, help=f"live searches per second (default {d.rate:g})")
    s.add_argument(
        "--interval-minutes", type=float, default=d.interval_minutes, help=f"trainer schedule ({d.interval_minutes:g})"
    )
    s.add_argument("--steps-per-cycle", type=int, default=d.steps_per_cycle, help=f"({d.steps_per_cycle})")
    s.add_argument("--seed", type=int, default=d.seed, help="traffic seed (default 0)")
    s.add_argument("--streamer-metrics-port", type=int, default=d.streamer_metrics_port, help="0 for none (9108)")
    s.add_argument("--trainer-metrics-port", type=int, default=d.trainer_metrics_port, help="0 for none (9109)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("config", help="print the effective configuration, every section and field")
    _add_config_flags(s)
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("stream", help="run the streamer daemon: source -> validated rows in the replay buffer")
    _add_config_flags(s)
    s.add_argument("--source", help="kafka://HOST:PORT/TOPIC or file://PATH (a JSONL file or a folder of them)")
    s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
    s.add_argument("--metrics-port", type=int, help="Prometheus metrics port, 0 for none (default 9108)")
    s.add_argument("--group-id", help="Kafka consumer group (default rankrl-streamer)")
    s.add_argument("--stop-when-idle", type=float, metavar="SECONDS", help="stop after this long without records")
    s.set_defaults(func=cmd_stream)

    s = sub.add_parser("train", help="run the trainer daemon: scheduled CQL cycles, gate, registry")
    _add_config_flags(s)
    s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.add_argument("--once", action="store_true", help="run one cycle now and exit (0 = a candidate was registered)")
    s.add_argument("--max-cycles", type=int, help="exit after this many cycles")
    s.set_defaults(func=cmd_train)

    for name, func, text in (
        ("models", cmd_models, "list the registered model versions"),
        ("status", cmd_status, "champion, last cycle, buffer"),
    ):
        s = sub.add_parser(name, help=text)
        _add_config_flags(s)
        s.add_argument("--models", help="model registry directory (paths.registry_dir)")
        if name == "status":
            s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
        s.set_defaults(func=func)

    s = sub.add_parser("evaluate", help="gate a candidate model against the champion on the buffer's holdout")
    _add_config_flags(s)
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
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("promote", help="make a version the champion (recorded as a manual promotion)")
    _add_config_flags(s)
    s.add_argument("version")
    s.add_argument("--reason", required=True, help="why (kept in the history)")
    s.add_argument("--force", action="store_true", help="promote a version the gate held")
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser("rollback", help="make an earlier champion the champion again")
    _add_config_flags(s)
    s.add_argument("--to", help="version to roll back to (default: the previous champion)")
    s.add_argument("--reason", required=True, help="why (kept in the history)")
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.set_defaults(func=cmd_rollback)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level, getattr(args, "log_file", None))
    try:
        return int(args.func(args))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rankrl models | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
