"""The `rankrl` command line: the parser (each group of subcommands adds its own, `rankrl/commands/`) and `main`.

Exit codes: 0 success, 1 the command ran and failed (its message says why), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from common.config import ConfigError
from deploy.registry import RegistryError
from rankrl import __version__
from rankrl.commands import daemons, inspect, offline, registry

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rankrl",
        description="Keep a search-ranking policy learning from live traffic (see README.md).",
    )
    p.add_argument("--version", action="version", version=f"rankrl {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (offline, inspect, daemons, registry):
        group.add_parsers(sub)
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
