"""Faults against the real broker: a topic recreated under the streamer, a dead-letter topic that refuses records,
a broker that goes away. Each fault is either survived with nothing lost or stored twice, or reported loudly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from common.buffer import open_buffer
from tests.conftest import create_topic
from tests.integration.test_streamer_kafka import produce, simulated, stored, valid_hashes
from tests.kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka


def stream(kafka: KafkaBroker, topic: str, buf: Path, group: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rankrl", "stream", "--source", f"kafka://{kafka.bootstrap}/{topic}",
           "--buffer", str(buf), "--group-id", group, "--metrics-port", "0", "--stop-when-idle", "2",
           "--set", "streamer.segment_max_age_s=0.3", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def recreate(kafka: KafkaBroker, topic: str, partitions: int = 1) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    for _ in range(100):  # the deletion completes in the background
        try:
            create_topic(kafka, topic, partitions)
            return
        except TopicAlreadyExistsError:
            time.sleep(0.2)
    raise AssertionError(f"{topic} could not be recreated")


@pytest.mark.parametrize("new_size", [150, 60], ids=["larger", "smaller"])
def test_a_recreated_topic_is_refused_with_both_positions_then_read_anew_after_a_reset(
    kafka: KafkaBroker, tmp_path: Path, new_size: int
) -> None:
    """Today's failure: the streamer resumed the new topic at the old topic's position, skipping its first records
    without a word. Now it stops with an error naming the topic, partition and positions, and the operator's
    `rankrl reset-positions` reads the new topic from its beginning."""
    topic, group, buf = kafka.topic("recreated"), kafka.topic("g"), tmp_path / "buffer"
    create_topic(kafka, topic)
    create_topic(kafka, topic + ".dlq")
    first = simulated(100, seed=3)
    produce(kafka, topic, first, 1)
    r = stream(kafka, topic, buf, group)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(stored(buf)) == 100

    recreate(kafka, topic)
    second = [v for v in simulated(new_size, seed=4)]
    produce(kafka, topic, second, 1)
    r = stream(kafka, topic, buf, group)
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"kafka topic {topic} is not the one" in r.stderr and "topic_id was" in r.stderr, r.stderr[-2000:]
    assert "'0': 100" in r.stderr and "rankrl reset-positions" in r.stderr
    assert len(stored(buf)) == 100  # nothing read from the new topic

    reset = subprocess.run([sys.executable, "-m", "rankrl", "reset-positions", topic, "--buffer", str(buf),
                            "--reason", "topic recreated in the test"], capture_output=True, text=True)  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    r = stream(kafka, topic, buf, group)
    assert r.returncode == 0, r.stderr[-2000:]
    got = stored(buf)
    assert len(got) == len(set(got)) and set(got) == valid_hashes(first) | valid_hashes(second)
    assert "positions were reset (topic recreated in the test)" in r.stderr


def test_a_position_past_the_log_end_is_refused_without_recorded_ids(kafka: KafkaBroker, tmp_path: Path) -> None:
    """A buffer written before topic ids were recorded (or a broker without them): a stored position past the
    partition's end is enough to refuse."""
    topic, group, buf = kafka.topic("shrunk"), kafka.topic("g"), tmp_path / "buffer"
    create_topic(kafka, topic)
    create_topic(kafka, topic + ".dlq")
    produce(kafka, topic, simulated(100, seed=5), 1)
    assert stream(kafka, topic, buf, group).returncode == 0
    manifest = buf / "manifest.json"
    m = orjson.loads(manifest.read_bytes())
    m["sources"] = {}
    manifest.write_bytes(orjson.dumps(m))
    recreate(kafka, topic)
    produce(kafka, topic, simulated(40, seed=6), 1)
    r = stream(kafka, topic, buf, group)
    assert r.returncode == 1 and "is past the partition's end" in r.stderr, r.stderr[-2000:]
    assert open_buffer(buf).load().rows == 100
