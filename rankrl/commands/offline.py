"""Commands on files and the simulator: `simulate`, `traffic` (a simulated search engine against `rankrl serve`),
`fit` (the original train.py) and `demo` (the whole loop)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from common.progress import add_progress_flag, progress_bar
from rankrl.commands import add_config_flags, config_from

log = logging.getLogger("rankrl")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from rankrl.demo_options import DemoOptions as DemoDefaults

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
    add_progress_flag(s)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser(
        "traffic",
        help="play a simulated search engine against rankrl serve: rank over HTTP, report outcomes later",
        description="Simulated searches ranked through `rankrl serve` (POST /v1/rank/batch) and each user's response "
        "reported 0 to --max-outcome-delay seconds later (POST /v1/outcome): live traffic for a deployment, e.g. "
        "compose's traffic service. Waits for the service to be ready first.",
    )
    s.add_argument("--url", default="http://127.0.0.1:8080", help="rankrl serve's address (default %(default)s)")
    s.add_argument("--rate", type=float, default=100.0, help="searches per second (default 100)")
    s.add_argument("--minutes", type=float, default=10.0, help="how long; 0 for until interrupted (default 10)")
    s.add_argument("--max-outcome-delay", type=float, default=5.0, help="seconds until an outcome is reported (5)")
    s.add_argument("--seed", type=int, default=0, help="traffic seed (default 0)")
    s.add_argument("--world-seed", type=int, default=7, help="seed of the world's hidden parameters (default 7)")
    s.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the service (300)")
    s.add_argument(
        "--token-file",
        help="serve's token file (serve.tokens_file format): the first token with both the rank and outcome scopes",
    )
    s.set_defaults(func=cmd_traffic)

    s = sub.add_parser("fit", help="the batch path of the original train.py: train once from a JSONL file")
    add_config_flags(s)
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
        description="Simulate a logging policy's history, then live traffic ranked through `rankrl serve` over HTTP "
        "with outcomes reported later; the streamer joins them into the buffer, the trainer trains and gates on a "
        "schedule, and the summary prints each cycle's estimated and true conversion. No Kafka needed.",
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
    s.add_argument("--serve-port", type=int, default=d.serve_port, help=f"rankrl serve on loopback ({d.serve_port})")
    s.set_defaults(func=cmd_demo)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write simulated searches logged by the simulator's stochastic logging policy."""
    from common.exploration import DirichletExploration
    from rankrl.sim import RankingWorld, WorldConfig, personalised_policy, write_jsonl

    world = RankingWorld(WorldConfig(), world_seed=args.world_seed)
    policy = personalised_policy if args.policy == "personalised" else None
    t0 = time.perf_counter()
    with progress_bar(args.progress, total=args.events, unit="search", desc="simulate") as bar:
        n = write_jsonl(
            world,
            args.out,
            args.events,
            args.seed,
            policy=policy,
            exploration=DirichletExploration(kappa=args.kappa),
            log_propensity=not args.no_propensity,
            on_batch=bar.update,
        )
    dt = time.perf_counter() - t0
    log.info("simulated events=%d out=%s seconds=%.2f events_per_s=%.0f", n, args.out, dt, n / dt)
    return 0


def traffic_token(path: str) -> str:
    """The first token of a serve token file that may both rank and report outcomes."""
    for line in Path(path).read_text().splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) == 2 and {"rank", "outcome"} <= set(parts[0].split(",")):
            return parts[1]
    raise RuntimeError(f"{path} has no token with both the rank and outcome scopes")


def cmd_traffic(args: argparse.Namespace) -> int:
    """Simulated search traffic through `rankrl serve`, outcomes reported later, for --minutes."""
    from rankrl.sim import RankingWorld, WorldConfig
    from rankrl.sim.engine import SearchEngine, run_traffic, wait_ready

    url = args.url.rstrip("/")
    engine = None
    try:
        token = traffic_token(args.token_file) if args.token_file else None
        wait_ready(url, args.ready_timeout)
        engine = SearchEngine(RankingWorld(WorldConfig(), world_seed=args.world_seed), url, args.seed,
                              args.max_outcome_delay, token=token)  # fmt: skip
        log.info("traffic to %s at %g searches/s for %s", url, args.rate,
                 f"{args.minutes:g} min" if args.minutes else "ever")  # fmt: skip
        run_traffic(engine, args.rate, 60.0 * args.minutes)
    except (RuntimeError, OSError) as e:
        log.error("traffic stopped: %s", e)
        return 1
    except KeyboardInterrupt:
        log.info("traffic interrupted after searches=%d", engine.served if engine else 0)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """The original train.py: train CQL once from a JSONL file and evaluate it on a test split."""
    from trainer.fit import ORIGINAL_PIPELINE, BadLogLine, FitOptions, fit

    model = {
        "batch_size": args.batch_size,
        "actor_learning_rate": args.actor_lr,
        "critic_learning_rate": args.critic_lr,
        "conservative_weight": args.conservative_weight,
        "n_epochs": args.epochs,
    }
    cfg = config_from(args, {"model": model}, base=ORIGINAL_PIPELINE)
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
        serve_port=args.serve_port,
    )
    try:
        summary = run_demo(opts)
    except RuntimeError as e:
        log.error("demo failed: %s", e)
        return 1
    return 0 if summary["cycles"] else 1
