"""A simulated search engine on the real path, for the demo and `rankrl traffic` (compose's traffic service).

It asks `rankrl serve` for each search's weights over HTTP (/v1/rank/batch), ranks with them, draws the user's
response from the simulator's world, and reports each outcome later (/v1/outcome, after a random delay), as a
search engine in any language would. The service logs both; the streamer joins them into the buffer.
"""

from __future__ import annotations

import heapq
import http.client
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from common.schema import ACTION_KEYS
from rankrl.sim.events import event_states, served_outcomes
from rankrl.sim.world import RankingWorld

log = logging.getLogger(__name__)


class SearchEngine:
    """The search engine's middle tier (see the module's docstring), over one keep-alive HTTP connection."""

    def __init__(
        self, world: RankingWorld, url: str, seed: int, max_delay_s: float, batch: int = 20, token: str | None = None
    ) -> None:
        parts = urlsplit(url)
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.world = world
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
        self.rng = np.random.default_rng(seed)
        self.max_delay_s = max_delay_s
        self.batch = batch
        self.version = "-"
        self.served = 0
        self.reported = 0
        self.due: list[tuple[float, int, bytes]] = []  # (report time, sequence, outcome body): a heap
        self.latency_s: dict[str, list[float]] = {"rank_batch": [], "outcome": []}

    def _post(self, endpoint: str, path: str, body: bytes) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.conn.request("POST", path, body, self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        self.latency_s[endpoint].append(time.perf_counter() - t0)
        if resp.status >= 300:
            raise RuntimeError(f"rankrl serve answered {path} with {resp.status}: {data[:500]!r}")
        return orjson.loads(data)

    def serve(self, n: int) -> None:
        """n searches now: weights from the service, the user's response drawn, each outcome queued for later."""
        ctx = self.world.contexts(n, self.rng)
        states = event_states(ctx)
        results: list[dict[str, Any]] = []
        for i in range(0, n, self.batch):
            body = orjson.dumps({"requests": [{"state": st} for st in states[i : i + self.batch]]})
            results += self._post("rank_batch", "/v1/rank/batch", body)["results"]
        actions = np.array([[r["weights"][k] for k in ACTION_KEYS] for r in results])
        now = time.time()
        for r, (ranking, meta, outcomes) in zip(results, served_outcomes(self.world, ctx, actions, self.rng),
                                                strict=True):  # fmt: skip
            if outcomes["user_action"] != "none":  # nothing to report is the default reward
                body = orjson.dumps({"log_id": r["log_id"], "ranking": ranking, "ranking_metadata": meta,
                                     "outcomes": outcomes})  # fmt: skip
                heapq.heappush(self.due, (now + float(self.rng.uniform(0, self.max_delay_s)), self.served, body))
            self.served += 1
        if results and results[-1]["policy_version"] != self.version:
            self.version = results[-1]["policy_version"]
            log.info("search engine: rankrl serve now serves %s", self.version)

    def report_due(self, until: float) -> None:
        """Report every outcome whose delay has passed by `until`."""
        while self.due and self.due[0][0] <= until:
            _, _, body = heapq.heappop(self.due)
            self._post("outcome", "/v1/outcome", body)
            self.reported += 1

    def one_second(self, rate: float) -> None:
        """`rate` searches now, then the outcomes falling due through the rest of the second."""
        tick = time.time()
        self.serve(max(1, round(rate)))
        while time.time() < tick + 1.0:
            self.report_due(time.time())
            time.sleep(0.02)

    def latency(self) -> dict[str, dict[str, float]]:
        return {
            k: {"calls": len(v), "p50_ms": 1e3 * float(np.median(v)), "p99_ms": 1e3 * float(np.percentile(v, 99))}
            for k, v in self.latency_s.items()
            if v
        }


def wait_ready(url: str, timeout_s: float = 120.0, check: Callable[[], object] | None = None) -> None:
    """Wait until `rankrl serve` at `url` answers /readyz with 200 (`check` runs between tries: it may raise)."""
    deadline = time.time() + timeout_s
    while True:
        if check is not None:
            check()
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.time() > deadline:
            raise RuntimeError(f"rankrl serve was not ready at {url} within {timeout_s:.0f} s")
        time.sleep(0.3)


def run_traffic(engine: SearchEngine, rate: float, seconds: float, progress_every_s: float = 30.0) -> None:
    """`rate` searches a second for `seconds` (0: until interrupted), each outcome reported when due, then the
    outcomes still owed. Logs progress every `progress_every_s`."""
    t0 = last = time.time()
    try:
        while not seconds or time.time() - t0 < seconds:
            tick = time.time()
            engine.one_second(rate)
            if tick - last >= progress_every_s:
                last = tick
                log.info("traffic searches=%d outcomes_reported=%d serving=%s", engine.served, engine.reported,
                         engine.version)  # fmt: skip
    finally:
        engine.report_due(float("inf"))  # the engine reports what it still owes before it stops
    log.info("traffic done searches=%d outcomes_reported=%d serving=%s", engine.served, engine.reported, engine.version)
