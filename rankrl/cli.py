"""The `rankrl` command line: one small function per subcommand; each imports its package lazily.

Exit codes: 0 success, 1 the command ran and failed (its message says why), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from common.config import ConfigError, RankrlConfig, load_config, parse_set_flags

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
    from common.simulator import RankingWorld, WorldConfig

    world = RankingWorld(WorldConfig(), world_seed=args.world_seed)
    policy = world.personalised_policy if args.policy == "personalised" else None
    t0 = time.perf_counter()
    n = world.write_jsonl(
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
    from streamer.app import StreamerStopped
    from streamer.daemon import run_streamer
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


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one configuration value (repeatable); wins over the file and RANKRL_* variables",
    )


def build_parser() -> argparse.ArgumentParser:
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

    s = sub.add_parser("stream", help="run the streamer daemon: source -> validated rows in the replay buffer")
    _add_config_flags(s)
    s.add_argument("--source", help="kafka://HOST:PORT/TOPIC or file://PATH (a JSONL file or a folder of them)")
    s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
    s.add_argument("--metrics-port", type=int, help="Prometheus metrics port, 0 for none (default 9108)")
    s.add_argument("--group-id", help="Kafka consumer group (default rankrl-streamer)")
    s.add_argument("--stop-when-idle", type=float, metavar="SECONDS", help="stop after this long without records")
    s.set_defaults(func=cmd_stream)
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


if __name__ == "__main__":
    raise SystemExit(main())
