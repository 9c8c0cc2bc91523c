"""The daemons: `stream` (the streamer), `train` (the trainer, or one cycle with --once), `serve` (decisions)."""

from __future__ import annotations

import argparse
import logging

from rankrl.commands import add_config_flags, config_from

log = logging.getLogger("rankrl")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("stream", help="run the streamer daemon: source -> validated rows in the replay buffer")
    add_config_flags(s)
    s.add_argument("--source", help="kafka://HOST:PORT/TOPIC or file://PATH (a JSONL file or a folder of them)")
    s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
    s.add_argument("--metrics-port", type=int, help="Prometheus metrics port, 0 for none (default 9108)")
    s.add_argument("--group-id", help="Kafka consumer group (default rankrl-streamer)")
    s.add_argument(
        "--decisions", help="join mode: the decisions rankrl serve logs (join.decisions; file:// or kafka://)"
    )
    s.add_argument("--outcomes", help="join mode: the outcomes rankrl serve logs (join.outcomes)")
    s.add_argument("--stop-when-idle", type=float, metavar="SECONDS", help="stop after this long without records")
    s.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a backfill bar on stderr: events read of those readable (default: with --stop-when-idle on a terminal)",
    )
    s.set_defaults(func=cmd_stream)

    s = sub.add_parser(
        "reset-positions",
        help="after a Kafka topic was recreated or moved: forget the buffer's positions in it (read it anew)",
    )
    add_config_flags(s)
    s.add_argument("topic", help="the Kafka topic the streamer refused to resume")
    s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
    s.add_argument("--reason", required=True, help="why (kept in the buffer's manifest and logged by the streamer)")
    s.set_defaults(func=cmd_reset_positions)

    s = sub.add_parser("train", help="run the trainer daemon: scheduled CQL cycles, gate, registry")
    add_config_flags(s)
    s.add_argument("--buffer", help="replay buffer directory (paths.buffer_dir)")
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.add_argument(
        "--once", action="store_true",
        help="run one cycle now and exit: 0 promoted, 3 registered and held, 1 nothing registered (skipped or failed)",
    )  # fmt: skip
    s.add_argument("--json", action="store_true", help="with --once: print the cycle's decision as JSON")
    s.add_argument("--max-cycles", type=int, help="exit after this many cycles")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("serve", help="run the decision service: HTTP rank/outcome, every decision logged")
    add_config_flags(s)
    s.add_argument("--models", help="model registry directory (paths.registry_dir)")
    s.add_argument("--host", help="listen address (serve.host, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (serve.port, default 8080)")
    s.add_argument("--decisions", help="file://PATH or kafka://HOST:PORT/TOPIC (serve.decisions)")
    s.add_argument("--outcomes", help="file://PATH or kafka://HOST:PORT/TOPIC (serve.outcomes)")
    s.set_defaults(func=cmd_serve)


def cmd_stream(args: argparse.Namespace) -> int:
    """Run the streamer daemon until SIGTERM/SIGINT (or until idle with --stop-when-idle)."""
    from streamer.daemon import run_streamer
    from streamer.loop import StreamerStopped
    from streamer.sources import FatalSourceError

    cfg = config_from(
        args,
        {
            "streamer": {"source": args.source, "metrics_port": args.metrics_port, "group_id": args.group_id},
            "paths": {"buffer_dir": args.buffer},
            "join": {"decisions": args.decisions, "outcomes": args.outcomes},
        },
    )
    try:
        # A backfill (--stop-when-idle) on a terminal shows a bar; a daemon's log never does unless asked.
        progress = args.progress if args.progress is not None or args.stop_when_idle else False
        return run_streamer(cfg, stop_when_idle_s=args.stop_when_idle, progress=progress)
    except (FatalSourceError, StreamerStopped) as e:
        log.error("streamer stopped: %s", e)
        return 1


def cmd_reset_positions(args: argparse.Namespace) -> int:
    """Forget the buffer's stored positions in a topic, so that the next streamer reads it from its beginning."""
    from common.buffer import BufferDir, BufferFormatError

    cfg = config_from(args, {"paths": {"buffer_dir": args.buffer}})
    try:
        buf = BufferDir(cfg.paths.buffer_dir)
    except BufferFormatError as e:
        log.error("reset-positions: %s", e)
        return 1
    source = f"kafka:{args.topic}"
    with buf.locked():
        m = buf.read_manifest()
        dropped = {k: v for k, v in m.positions.items() if k.startswith(source + ":")}
        if not dropped and source not in m.sources:
            log.error("reset-positions: the buffer %s holds no positions in topic %s", buf.path, args.topic)
            return 1
        for k in dropped:
            del m.positions[k]
        m.sources[source] = {"reset": args.reason, "previous": m.sources.get(source), "positions": dropped}
        buf.write_manifest(m)
    print(f"forgot the positions in {args.topic} ({dropped}); the next streamer reads it from its beginning")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Run the trainer daemon (APScheduler), or one cycle with --once."""
    from trainer.daemon import run_trainer

    cfg = config_from(args, {"paths": {"buffer_dir": args.buffer, "registry_dir": args.models}})
    return run_trainer(cfg, once=args.once, max_cycles=args.max_cycles, as_json=args.json)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the decision service until SIGTERM/SIGINT."""
    from deploy.registry import RegistryError
    from deploy.service import run_serve

    cfg = config_from(
        args,
        {
            "paths": {"registry_dir": args.models},
            "serve": {"host": args.host, "port": args.port, "decisions": args.decisions, "outcomes": args.outcomes},
        },
    )
    try:
        return run_serve(cfg)
    except (RegistryError, OSError) as e:
        log.error("serve: %s", e)
        return 1
