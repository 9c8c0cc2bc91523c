"""The fuzz corpus through the Kafka source on a real broker: tombstones, an empty value, a record just under the
broker's message limit whose dead letter used to exceed it; every valid event stored once, every bad one in
`<topic>.dlq` with its reason, the process still running until idle."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from common.buffer import open_buffer
from common.config import RankrlConfig, load_config
from streamer.daemon import build_streamer
from tests.conftest import create_topic
from tests.fuzz_corpus import corpus, oversized
from tests.kafka_broker import KafkaBroker
from tests.streamer.test_poison import check_outcome

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_fuzz_corpus_through_the_kafka_source(kafka: KafkaBroker, tmp_path: Path) -> None:
    topic = kafka.topic("fuzz")
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="rankrl-tests")
    try:  # the source topic takes records over the streamer's 1 MiB limit; the DLQ topic keeps the default limit
        admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"max.message.bytes": str(4 << 20)})])
    finally:
        admin.close()
    create_topic(kafka, topic + ".dlq", partitions=1)
    cases = corpus(n_valid=1_000, n_bad=10_000, seed=3, kafka=True)
    # 1,048,400 bytes: under the 1 MiB record limit (so parsed, and not JSON), but value + headers of its dead letter
    # were over the producer's request size, and that send error stopped the stream.
    cases += list(oversized(2, 1_048_400, "not_json")) + list(oversized(2, 1_200_000, "too_large"))
    p = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=5, max_request_size=2 << 20)
    sent = [p.send(topic, key=b"k" if c.value is None else None, value=c.value, partition=i % 3)  # tombstones have keys
            for i, c in enumerate(cases)]  # fmt: skip
    p.flush(timeout=120)
    for f in sent:
        f.get(timeout=60)
    p.close()

    buf = tmp_path / "buffer"
    cfg: RankrlConfig = load_config(
        environ={},
        cli={
            "streamer": {
                "source": f"kafka://{kafka.bootstrap}/{topic}",
                "group_id": kafka.topic("g"),
                "metrics_port": 0,
                "segment_max_age_s": 0.5,
            },
            "paths": {"buffer_dir": str(buf)},
        },
    )
    metrics = CollectorRegistry()
    s = build_streamer(cfg, metrics, stop_when_idle_s=4.0)
    assert s.run() == 0

    c = KafkaConsumer(topic + ".dlq", bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                      group_id=kafka.topic("dlqread"), consumer_timeout_ms=8000, fetch_max_bytes=64 << 20)  # fmt: skip
    letters = []
    for m in c:
        h = {k: v.decode() for k, v in m.headers}
        assert h["dlq.original.topic"] == topic and h["dlq.error.reason"]
        assert len(m.value or b"") <= 256 << 10  # at most dlq_max_value_bytes of the record; the source has all
        letters.append((h["dlq.error.reason"], h["dlq.error.field"]))
    c.close()
    got = check_outcome(cases, open_buffer(buf).load().column("log_id_hash").tolist(), letters)
    assert got["empty_record"] == 20 and got["too_large"] == 2
    for reason, n in got.items():
        assert metrics.get_sample_value("rankrl_streamer_events_rejected_total", {"reason": reason}) == n
    assert sum(open_buffer(buf).manifest().positions.values()) == len(cases)  # every record behind the positions
    print(f"fuzz kafka source: {len(cases)} records, dead letters {dict(collections.Counter(r for r, _ in letters))}")
