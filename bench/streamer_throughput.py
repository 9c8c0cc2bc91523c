"""Streamer throughput against the raw kafka-python consume rate, on the local broker.

    python bench/streamer_throughput.py [--events 50000] [--partitions 3]

Produces N simulated events (~2.3 KB each) to a fresh topic, then in this one process:
  raw       a KafkaConsumer with the streamer's settings that only polls until it has seen N records;
  streamer  the real streamer (parse, validate, reward, features, append, seal with fsync, commit) until
            the buffer's manifest holds N rows.
Prints both rates and their ratio (the goal: the streamer keeps >= 60% of the raw rate). Uses
KAFKA_BOOTSTRAP_SERVERS when set, else starts the jar broker like the tests do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from common.buffer import open_buffer
from common.config import load_config
from common.simulator import RankingWorld
from streamer.daemon import build_streamer
from streamer.sources import KafkaSettings
from tests.kafka_broker import kafka_broker


def produce(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.create_topics([NewTopic(topic + ".dlq", num_partitions=1, replication_factor=1)])
    admin.close()
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)
    i = 0
    for _, _, _, events in RankingWorld().simulate(n, seed=1):
        for e in events:
            p.send(topic, value=orjson.dumps(e), partition=i % partitions)
            i += 1
    p.flush(timeout=120)
    p.close()


def raw_rate(bootstrap: str, topic: str, n: int) -> float:
    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1000,
        max_partition_fetch_bytes=KafkaSettings("", "").max_partition_fetch_bytes,  # the streamer's setting
    )
    seen = 0
    t0 = None
    while seen < n:
        batch = c.poll(timeout_ms=1000)
        if batch and t0 is None:
            t0 = time.perf_counter()  # from the first records: group join is not consumption
        seen += sum(len(v) for v in batch.values())
    dt = time.perf_counter() - (t0 or time.perf_counter())
    c.close()
    return n / dt


def streamer_rate(bootstrap: str, topic: str, n: int, buf: Path) -> float:
    cfg = load_config(
        environ={},
        cli={
            "streamer": {
                "source": f"kafka://{bootstrap}/{topic}",
                "group_id": f"st-{uuid.uuid4().hex[:8]}",
                "metrics_port": 0,
                "max_poll_records": 1000,
            },
            "paths": {"buffer_dir": str(buf)},
        },
    )
    s = build_streamer(cfg, CollectorRegistry())
    t = threading.Thread(target=s.run)
    t.start()
    while s.metrics.consumed._value.get() == 0:
        time.sleep(0.005)
    t0 = time.perf_counter()
    # Durable means sealed: wait until the manifest holds every row (the age trigger seals the tail).
    while open_buffer(buf).stats()["rows"] < n:
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    s.stop()
    t.join()
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, kafka_broker(Path(tmp) / "kafka") as broker:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        produce(broker.bootstrap, topic, args.events, args.partitions)
        print(f"produced {args.events} events in {time.perf_counter() - t:.1f}s ({broker.origin})")
        raw = raw_rate(broker.bootstrap, topic, args.events)
        st = streamer_rate(broker.bootstrap, topic, args.events, Path(tmp) / "buffer")
        raw2 = raw_rate(broker.bootstrap, topic, args.events)  # again, to see the machine's noise
        print(f"raw kafka-python poll:   {raw:,.0f} events/s (second run {raw2:,.0f})")
        print(f"streamer end to end:     {st:,.0f} events/s (parse, validate, reward, features, fsync'd seal)")
        print(f"ratio streamer/raw:      {st / max(raw, raw2):.2f} (goal >= 0.60)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
