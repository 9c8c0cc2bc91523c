"""Smoke test against the real broker: simulated events produced with kafka-python all come back."""

from __future__ import annotations

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from common.schema import parse_event
from rankrl.sim import RankingWorld, simulate
from tests.conftest import create_topic
from tests.kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka


def test_produce_and_consume_simulated_events(kafka: KafkaBroker) -> None:
    topic = kafka.topic("smoke")
    create_topic(kafka, topic, partitions=3)
    _, _, _, events = next(simulate(RankingWorld(), 1000, seed=1))
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=5)
    for e in events:
        producer.send(topic, key=e["log_id"].encode(), value=orjson.dumps(e))
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=kafka.topic("g"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    seen = set()
    try:
        for msg in consumer:
            seen.add(parse_event(msg.value).log_id)
            if len(seen) == len(events):
                break
    finally:
        consumer.close()
    assert seen == {e["log_id"] for e in events}
