"""Graceful stop for the long-lived daemons (streamer, trainer): SIGTERM/SIGINT only call the daemon's `stop()`.

What stopping means is the daemon's own business (the streamer seals, commits and closes; the trainer stops
between epochs and registers nothing); the handler only asks. A second Ctrl+C falls back to the default
interrupt, so a daemon stuck in a blocking call can still be interrupted from a terminal.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def install_stop_handlers(stop: Callable[[], None], daemon: str) -> None:
    """SIGTERM/SIGINT call `stop()` once; a second Ctrl+C raises KeyboardInterrupt as usual."""

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal=%s: %s stopping", signal.Signals(signum).name, daemon)
        stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
