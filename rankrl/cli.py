"""The `rankrl` command line: the parser (each group of subcommands adds its own, `rankrl/commands/`) and `main`.

Exit codes: 0 success, 1 the command ran and failed (its message says why), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence

from common.config import ConfigError
from deploy.registry import RegistryError
from rankrl import __version__
from rankrl.commands import daemons, inspect, offline, registry

log = logging.getLogger("rankrl")


class JsonFormatter(logging.Formatter):
    """One JSON object a line (`--log-format json`), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}  # fmt: skip
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(level: str, log_file: str | None = None, fmt: str = "text") -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    if fmt == "json":
        for h in handlers:
            h.setFormatter(JsonFormatter())
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        handlers=handlers,
        force=True,
    )
    # d3rlpy imports gym, whose import prints an "unmaintained" banner on every trainer start
    warnings.filterwarnings("ignore", message="Gym has been unmaintained", category=UserWarning)


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _add_log_flags(p: argparse.ArgumentParser, top: bool) -> None:
    # before or after the subcommand: the subcommand's copies leave the value alone unless given
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    p.add_argument("--log-level", default=default("INFO"), choices=LOG_LEVELS)
    p.add_argument("--log-format", default=default("text"), choices=["text", "json"], help="text, or one JSON a line")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rankrl",
        description="Keep a search-ranking policy learning from live traffic (see README.md).",
    )
    p.add_argument("--version", action="version", version=f"rankrl {__version__}")
    _add_log_flags(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (offline, inspect, daemons, registry):
        group.add_parsers(sub)
    for s in sub.choices.values():
        _add_log_flags(s, top=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level, getattr(args, "log_file", None), args.log_format)
    try:
        return int(args.func(args))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    except RegistryError as e:  # a damaged registry file: say which and how to repair it, no traceback
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rankrl models | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
