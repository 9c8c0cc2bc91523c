"""The decision path's property, in process: for any rank request serve accepts, the row the join and the
streamer's encoder store holds the served state vector, weights and log-density bit for bit; for any it refuses,
nothing is logged. Serve's own code (`DecisionService._decide`) writes to an in-memory log; the join and the
encoder are the streamer's."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from hypothesis import HealthCheck, given, settings

from common.config import RankrlConfig
from common.decisions import RankRequest, decode
from common.reward import RewardConfig
from common.schema import InvalidEvent
from deploy.registry import ModelRegistry
from deploy.service import DecisionService
from deploy.serving import ServingPolicy
from streamer.encode import encode
from streamer.join import JoinSource
from streamer.sources.base import Record
from tests.deploy.fuzz_requests import rank_requests
from tests.streamer.test_join import TwoPartitions


class MemoryLog:
    name = "memory"

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    async def write(self, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
        self.records += records

    def submit(self, records: list[tuple[bytes, bytes]]) -> None:
        self.records += records

    def ready(self) -> bool:
        return True

    def alive(self) -> bool:
        return True

    def close(self) -> None: ...


def service(tmp: str) -> DecisionService:
    cfg = RankrlConfig()
    policy = ServingPolicy(ModelRegistry(tmp), default_weights=np.ones(7), auto_refresh=False, seed=0)
    return DecisionService(cfg, policy, MemoryLog(), MemoryLog())


SERVICE = service("/nonexistent-registry-for-tests")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rank_requests())
def test_any_accepted_request_is_stored_exactly_as_served(req: dict) -> None:
    import orjson

    svc = SERVICE
    log: MemoryLog = svc.decisions  # type: ignore[assignment]
    log.records.clear()
    svc._answered.clear()
    try:
        (answer,) = asyncio.run(svc._decide([decode(orjson.dumps(req), RankRequest)]))
    except InvalidEvent:
        assert not log.records  # refused: nothing logged
        return
    served = orjson.loads(answer)
    (record,) = log.records
    now = [time.time()]
    src = TwoPartitions()
    src.queued = [[Record("d", 0, 1, record[1], topic="d")]]
    join = JoinSource(src, lambda r: True,
                      lambda r, e: (_ for _ in ()).throw(AssertionError(f"dead letter {e}")), 1.0, 0.0,
                      clock=lambda: now[0])  # fmt: skip
    join.poll(0)
    now[0] += 100
    (event,) = [r for r in join.poll(0) if not r.marker]
    batch = encode([event.value], RewardConfig())
    assert not batch.errors, batch.errors
    from common.features import state_tuple

    d = decode(record[1], __import__("common.decisions", fromlist=["Decision"]).Decision)
    expect_state = np.array([state_tuple(d.state, ())], dtype=np.float32)
    assert batch.columns["state"].tobytes() == expect_state.tobytes()
    w = np.array([list(served["weights"].values())])
    w = w / w.max(axis=1, keepdims=True)
    assert batch.columns["action"].tobytes() == (w / w.sum(axis=1, keepdims=True)).astype(np.float32).tobytes()
    assert float(batch.columns["log_propensity"][0]) == served["log_propensity"]
    # what the policy saw is the stored state: its mean on the stored state is the one served
    mean = svc.policy.mean(batch.columns["state"])[0]
    assert np.allclose(mean, list(served["mean"].values()), rtol=0, atol=1e-12)
