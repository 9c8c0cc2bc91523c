"""The outcome join's throughput against the plain path, on the same searches from files, in one process.

    python bench/join_throughput.py [--searches 100000] [--repeat 2] [--kafka] [--out bench/results/join_throughput.txt]

The same N simulated searches twice: as already-joined events (one JSONL file, `streamer.source`: the plain path)
and as what `rankrl serve` logs (a decisions file and an outcomes file, one outcome per search that did anything:
the join). Each is streamed by the real streamer (`build_streamer`, defaults: one parse worker) until every row
is appended; the clock starts at the first records polled. Searches are 1 ms apart in event time, the join's
window is 0.1 s with no lateness, so the last windows close within 0.1 s of wall time. The ratio is searches/s
of the join over events/s of the plain path, measured in the same run (goal >= 0.8). With --kafka the same
three streams are also produced to topics (3 partitions each, decisions and outcomes keyed by log_id) of the
local broker (KAFKA_BOOTSTRAP_SERVERS, else the jar broker the tests start) and both paths measured again there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from common.config import load_config
from common.decisions import iso_now
from rankrl.sim import RankingWorld, simulate
from streamer.daemon import build_streamer


def write_inputs(tmp: Path, n: int) -> tuple[int, int]:
    t0 = time.time() - 86_400
    n_out = 0
    with open(tmp / "events.jsonl", "wb") as ev, open(tmp / "decisions.jsonl", "wb") as de, \
            open(tmp / "outcomes.jsonl", "wb") as oc:  # fmt: skip
        i = 0
        for _, _, _, events in simulate(RankingWorld(), n, seed=1):
            for e in events:
                e["created_at"] = iso_now(t0 + 0.001 * i)
                ev.write(orjson.dumps(e) + b"\n")
                d = {k: v for k, v in e.items() if k not in ("ranking", "outcomes", "reward")}
                de.write(orjson.dumps(d) + b"\n")
                if e["outcomes"]["user_action"] != "none":
                    o = {"log_id": e["log_id"], "ranking": e["ranking"], "outcomes": e["outcomes"],
                         "ranking_metadata": e.get("ranking_metadata", []),
                         "created_at": iso_now(t0 + 0.001 * i + 5e-4)}  # fmt: skip
                    oc.write(orjson.dumps(o) + b"\n")
                    n_out += 1
                i += 1
    return i, n_out


def produce(bootstrap: str, tmp: Path, topics: dict[str, str], partitions: int = 3) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics.values()]
        + [NewTopic(t + ".dlq", num_partitions=1, replication_factor=1) for t in topics.values()]
    )
    admin.close()
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024)
    for name, topic in topics.items():
        with open(tmp / f"{name}.jsonl", "rb") as f:
            for i, line in enumerate(f):
                value = line.rstrip(b"\n")
                key = orjson.loads(value)["log_id"].encode()
                if name == "events":
                    p.send(topic, value=value, partition=i % partitions)
                else:
                    p.send(topic, key=key, value=value)
    p.flush(timeout=300)
    p.close()


def rate(cfg_cli: dict[str, Any], n: int) -> float:
    s = build_streamer(load_config(environ={}, cli=cfg_cli), CollectorRegistry())
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
    while s.metrics.appended._value.get() < n:
        time.sleep(0.005)
    dt = time.perf_counter() - first[0]
    s.stop()
    t.join()
    return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--searches", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--kafka", action="store_true", help="measure on Kafka topics too")
    args = ap.parse_args()
    lines = [
        f"# python bench/join_throughput.py --searches {args.searches} --repeat {args.repeat}"
        + (" --kafka" if args.kafka else "")
    ]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        n, n_out = write_inputs(tmp, args.searches)
        lines.append(f"{n:,} searches, {n_out:,} outcomes (files)")
        base = {"streamer": {"metrics_port": 0, "follow": True}}
        for rep in range(args.repeat):
            plain = rate({**base, "streamer": {**base["streamer"], "source": f"file://{tmp / 'events.jsonl'}"},
                          "paths": {"buffer_dir": str(tmp / f"plain-{rep}")}}, n)  # fmt: skip
            joined = rate({**base, "join": {"decisions": f"file://{tmp / 'decisions.jsonl'}",
                                            "outcomes": f"file://{tmp / 'outcomes.jsonl'}",
                                            "window_s": 0.1, "lateness_s": 0.0},
                           "paths": {"buffer_dir": str(tmp / f"join-{rep}")}}, n)  # fmt: skip
            lines.append(f"files, run {rep + 1}: plain {plain:,.0f} events/s, join {joined:,.0f} searches/s, "
                         f"ratio {joined / plain:.2f} (goal >= 0.8)")  # fmt: skip
            print(lines[-1], flush=True)
        if args.kafka:
            import uuid

            from tests.kafka_broker import kafka_broker

            with kafka_broker(tmp / "kafka") as broker:
                b = broker.bootstrap
                topics = {name: f"bench-{name}-{uuid.uuid4().hex[:6]}" for name in ("events", "decisions", "outcomes")}
                produce(b, tmp, topics)
                for rep in range(args.repeat):
                    group = uuid.uuid4().hex[:8]
                    plain = rate({"streamer": {"metrics_port": 0, "source": f"kafka://{b}/{topics['events']}",
                                               "group_id": f"p{group}"},
                                  "paths": {"buffer_dir": str(tmp / f"kplain-{rep}")}}, n)  # fmt: skip
                    joined = rate({"streamer": {"metrics_port": 0, "group_id": f"j{group}"},
                                   "join": {"decisions": f"kafka://{b}/{topics['decisions']}",
                                            "outcomes": f"kafka://{b}/{topics['outcomes']}",
                                            "window_s": 0.1, "lateness_s": 0.0},
                                   "paths": {"buffer_dir": str(tmp / f"kjoin-{rep}")}}, n)  # fmt: skip
                    lines.append(f"kafka ({broker.origin}), run {rep + 1}: plain {plain:,.0f} events/s, join "
                                 f"{joined:,.0f} searches/s, ratio {joined / plain:.2f} (goal >= 0.8)")  # fmt: skip
                    print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
