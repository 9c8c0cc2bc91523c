"""Progress bars for long interactive work (tqdm), on stderr.

`--progress` / `--no-progress` on `simulate`, `evaluate` and `stream`; by default a bar is drawn only when stderr is
a terminal, so a daemon's log or a CI log never fills with carriage returns. While a bar is open, log lines are
routed through it (`tqdm.write`) so they do not tear the bar.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


def add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar on stderr (default: only when stderr is a terminal)",
    )


def wanted(flag: bool | None) -> bool:
    """The flag's answer, or for None whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


@contextlib.contextmanager
def progress_bar(flag: bool | None, **kwargs: Any) -> Iterator[tqdm]:
    """A tqdm bar, or a disabled one (it costs nothing) when not `wanted`; logging goes through it while open.
    tqdm is imported here so that `rankrl --help` stays fast."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    on = wanted(flag)
    bar = tqdm(disable=not on, file=sys.stderr, dynamic_ncols=True, mininterval=0.2, **kwargs)
    try:
        if on:
            with logging_redirect_tqdm():
                yield bar
        else:
            yield bar
    finally:
        bar.close()
