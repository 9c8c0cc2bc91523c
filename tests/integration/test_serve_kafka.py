"""The decision service and the outcome join against the real broker: decisions and outcomes logged to their
topics before the answers, then joined by the streamer into exactly one event per search."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from common.buffer import open_buffer
from tests.conftest import create_topic
from tests.deploy.test_service import post, rank_request, serving
from tests.kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka


def read_topic(kafka: KafkaBroker, topic: str, n: int) -> list[tuple[bytes, bytes]]:
    c = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=10_000, enable_auto_commit=False)  # fmt: skip
    out = []
    try:
        for m in c:
            out.append((m.key, m.value))
            if len(out) >= n:
                break
    finally:
        c.close()
    return out


def test_serve_logs_to_kafka_and_the_join_stores_each_search_once(kafka: KafkaBroker, tmp_path: Path) -> None:
    dec, out = kafka.topic("decisions"), kafka.topic("outcomes")
    create_topic(kafka, dec, partitions=3)
    create_topic(kafka, out, partitions=3)
    responses = []
    with serving(tmp_path, decisions=f"kafka://{kafka.bootstrap}/{dec}",
                 outcomes=f"kafka://{kafka.bootstrap}/{out}") as url:  # fmt: skip
        for _ in range(3):
            code, b = post(url + "/v1/rank/batch", {"requests": [rank_request() for _ in range(100)]})
            assert code == 200
            responses += b["results"]
        bought = {"user_action": "purchase", "purchased_ranks": [1], "purchased_total_value": 199.0}
        click = {"user_action": "click", "interacted_ranks": [1]}
        for i, r in enumerate(responses):
            if i % 3 != 2:
                body = {"log_id": r["log_id"], "ranking": ["prod_1"], "outcomes": bought if i % 3 == 0 else click}
                assert post(url + "/v1/outcome", body)[0] == 202

    logged = read_topic(kafka, dec, 300)
    by_id = {k.decode(): orjson.loads(v) for k, v in logged}
    assert len(by_id) == 300 and set(by_id) == {r["log_id"] for r in responses}  # keyed by log_id, none lost
    first = by_id[responses[0]["log_id"]]
    assert first["log_propensity"] == responses[0]["log_propensity"] and first["action"] == responses[0]["weights"]

    cmd = [sys.executable, "-m", "rankrl", "stream", "--decisions", f"kafka://{kafka.bootstrap}/{dec}",
           "--outcomes", f"kafka://{kafka.bootstrap}/{out}", "--buffer", str(tmp_path / "buffer"),
           "--metrics-port", "0", "--group-id", kafka.topic("g"), "--stop-when-idle", "3",
           "--set", "join.window_s=2", "--set", "join.lateness_s=0.5"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    w = open_buffer(tmp_path / "buffer").load()
    assert w.rows == 300 and len(set(w.column("log_id_hash").tolist())) == 300
    assert int(w.column("converted").sum()) == 100
    # a second run of the same group re-reads nothing: every position was committed
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and open_buffer(tmp_path / "buffer").load().rows == 300


def test_the_join_refuses_topics_with_different_partition_counts(kafka: KafkaBroker, tmp_path: Path) -> None:
    dec, out = kafka.topic("decisions"), kafka.topic("outcomes")
    create_topic(kafka, dec, partitions=3)
    create_topic(kafka, out, partitions=1)
    cmd = [sys.executable, "-m", "rankrl", "stream", "--decisions", f"kafka://{kafka.bootstrap}/{dec}",
           "--outcomes", f"kafka://{kafka.bootstrap}/{out}", "--buffer", str(tmp_path / "buffer"),
           "--metrics-port", "0", "--stop-when-idle", "2"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "same partition count" in r.stderr, r.stderr[-2000:]
