"""The `rankrl` subcommands, one module per group; `rankrl/cli.py` builds the parser from their `add_parsers`.

    offline.py   simulate, traffic, fit, demo   files and the simulator
    daemons.py   stream, train               the long-lived daemons
    registry.py  models, status, promote, rollback   the operator's registry commands
    inspect.py   evaluate, config            read-only inspection

Each command imports its package lazily, so `rankrl --help` stays fast.
"""

from __future__ import annotations

import argparse

from common.config import RankrlConfig, discover_config_file, load_config, parse_set_flags


def config_from(
    args: argparse.Namespace,
    extra: dict[str, dict[str, object]] | None = None,
    base: RankrlConfig | None = None,
) -> RankrlConfig:
    """`base` (default: the defaults), then the TOML file (--config), then RANKRL_* environment, then --set flags
    and the subcommand's own flags."""
    cli: dict[str, dict[str, object]] = dict(parse_set_flags(getattr(args, "set", None) or []))
    for section, values in (extra or {}).items():
        cli.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    cfg: RankrlConfig = load_config(getattr(args, "config", None) or discover_config_file(), cli=cli, base=base)
    return cfg


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="TOML configuration file (default: $RANKRL_CONFIG, ./rankrl.toml, /etc/rankrl/rankrl.toml)"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one configuration value (repeatable); wins over the file and RANKRL_* variables",
    )
