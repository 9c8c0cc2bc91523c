"""Streamer throughput against the raw kafka-python consume rate, on the local broker.

    python bench/streamer_throughput.py [--events 50000] [--partitions 3] [--parse-workers 1] [--repeat 1]

Produces N simulated events (~2.3 KB each) to a fresh topic, then in this one process:
  raw       a KafkaConsumer with the streamer's settings that only polls until it has seen N records;
  streamer  the real streamer (parse, validate, reward, features, append, seal with fsync, commit) until
            all N rows are durable (appended, then the stop's final seal); once per value of --parse-workers
            (e.g. 0,1,2: 0 parses in the main process, the baseline the workers are measured against).
Both clocks start at the first polled records (group join and the workers' start are not consumption). Raw
runs before and after the streamer runs (the machine is noisy); each ratio is against the faster raw run
(the goal: the streamer keeps >= 60% of the raw rate). --repeat runs the whole sequence again on new consumer
groups. Uses KAFKA_BOOTSTRAP_SERVERS when set, else starts the jar broker like the tests do.
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
from rankrl.sim import RankingWorld, simulate
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
    for _, _, _, events in simulate(RankingWorld(), n, seed=1):
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


def streamer_rate(bootstrap: str, topic: str, n: int, buf: Path, workers: int) -> float:
    cfg = load_config(
        environ={},
        cli={
            "streamer": {
                "source": f"kafka://{bootstrap}/{topic}",
                "group_id": f"st-{uuid.uuid4().hex[:8]}",
                "metrics_port": 0,
                "max_poll_records": 1000,
                "parse_workers": workers,
            },
            "paths": {"buffer_dir": str(buf)},
        },
    )
    s = build_streamer(cfg, CollectorRegistry())
    first: list[float] = []
    poll = s.source.poll

    def timed_poll(timeout_s: float) -> list:
        records = poll(timeout_s)
        if records and not first:
            first.append(time.perf_counter())
        return records

    s.source.poll = timed_poll  # type: ignore[method-assign]
    t = threading.Thread(target=s.run)
    t.start()
    # Durable means sealed: once every row is appended, stop (the streamer seals what it holds, commits and
    # closes) and stop the clock when that is done.
    while s.metrics.appended._value.get() < n:
        time.sleep(0.005)
    s.stop()
    t.join()
    dt = time.perf_counter() - first[0]
    rows = open_buffer(buf).stats()["rows"]
    if rows != n:
        raise SystemExit(f"the buffer holds {rows} rows, expected {n}")
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--parse-workers", default="1", help="comma-separated worker counts to measure, e.g. 0,1,2")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    workers = [int(w) for w in args.parse_workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp, kafka_broker(Path(tmp) / "kafka") as broker:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        produce(broker.bootstrap, topic, args.events, args.partitions)
        print(f"produced {args.events} events in {time.perf_counter() - t:.1f}s ({broker.origin})")
        for rep in range(args.repeat):
            raw = raw_rate(broker.bootstrap, topic, args.events)
            rates = {}
            for w in workers:
                buf = Path(tmp) / f"buffer-{rep}-{w}"
                rates[w] = streamer_rate(broker.bootstrap, topic, args.events, buf, w)
            raw2 = raw_rate(broker.bootstrap, topic, args.events)
            print(f"run {rep + 1}: raw kafka-python poll {raw:,.0f} events/s (after the streamer runs {raw2:,.0f})")
            for w, st in rates.items():
                print(
                    f"  streamer, parse_workers={w}: {st:,.0f} events/s, ratio streamer/raw {st / max(raw, raw2):.2f}"
                    " (goal >= 0.60)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
