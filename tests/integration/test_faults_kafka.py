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


def test_a_dead_letter_topic_that_refuses_records_commits_nothing_and_counts_nothing(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    """The DLQ topic's max.message.bytes is smaller than any dead letter, even without its value. Today's failure:
    none arrived, yet the offsets past them were committed and dlq_writes_total counted them. Now the streamer
    pauses, commits nothing past a dead letter the broker did not take, counts none as written, and stops
    non-zero when the refusal lasts."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from prometheus_client import CollectorRegistry

    from streamer.daemon import build_streamer
    from streamer.loop import StreamerStopped
    from tests.integration.test_streamer_kafka import MALFORMED, _committed, config

    topic, group, buf = kafka.topic("dlqrefuses"), kafka.topic("g"), tmp_path / "buffer"
    create_topic(kafka, topic)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(topic + ".dlq", 1, 1, topic_configs={"max.message.bytes": "64"})])
    finally:
        admin.close()
    good = simulated(200, seed=7)
    produce(kafka, topic, good[:100] + MALFORMED * 7 + good[100:], 1)
    reg = CollectorRegistry()
    s = build_streamer(config(kafka, topic, buf, group, max_retry_s=8.0), reg)
    with pytest.raises(StreamerStopped, match="dlq error persisted"):
        s.run()
    assert reg.get_sample_value("rankrl_streamer_dlq_writes_total") == 0
    assert reg.get_sample_value("rankrl_streamer_errors_total", {"kind": "dlq"}) >= 1
    committed = _committed(kafka, group, topic, 1)[f"kafka:{topic}:0"]
    assert committed is None or committed <= 100, f"committed {committed}: past dead letters the DLQ never took"
    assert open_buffer(buf).manifest().positions.get(f"kafka:{topic}:0", 0) <= 100


def scrape(port: int) -> dict[str, float]:
    """The streamer's metrics as name{labels} -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@pytest.mark.slow
def test_a_broker_outage_is_reported_and_is_not_idleness(tmp_path: Path) -> None:
    """Today's failures: --stop-when-idle exited 0 during an outage with records unread, and the metrics said
    nothing (paused 0, no broker error). Now the outage pauses and counts, the streamer waits it out, and after
    the broker returns it reads the rest: every event once."""
    from tests.deploy.test_service import free_port
    from tests.kafka_broker import killable_broker

    with killable_broker(tmp_path / "kafka") as k:
        kafka = k.broker
        topic, group, buf = kafka.topic("outage"), kafka.topic("g"), tmp_path / "buffer"
        create_topic(kafka, topic, partitions=2)
        create_topic(kafka, topic + ".dlq")
        values = simulated(3000, seed=8)
        produce(kafka, topic, values[:1500], 2)
        port = free_port()
        cmd = [sys.executable, "-m", "rankrl", "stream", "--source", f"kafka://{kafka.bootstrap}/{topic}",
               "--buffer", str(buf), "--group-id", group, "--metrics-port", str(port), "--stop-when-idle", "8",
               "--set", "streamer.segment_max_age_s=0.3"]  # fmt: skip
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not (buf / "manifest.json").exists() or open_buffer(buf).stats()["rows"] < 1500:
                assert time.monotonic() < deadline and p.poll() is None, "the streamer did not read the first half"
                time.sleep(0.2)
            k.kill()
            time.sleep(13)  # more than --stop-when-idle and the 3 s it takes to call it an outage
            assert p.poll() is None, f"the streamer took the outage for idleness and exited: {p.communicate()[1]}"
            m = scrape(port)
            assert m["rankrl_streamer_paused"] == 1
            assert m['rankrl_streamer_errors_total{kind="broker"}'] >= 1
            k.resume()
            produce(kafka, topic, values[1500:], 2)
            while open_buffer(buf).stats()["rows"] < 3000:
                assert time.monotonic() < deadline + 120 and p.poll() is None, "the streamer did not recover"
                time.sleep(0.2)
            assert scrape(port)["rankrl_streamer_paused"] == 0
            assert p.wait(timeout=120) == 0
        finally:
            if p.poll() is None:
                p.kill()
        _, err = p.communicate()
        assert "no broker reachable" in err and "broker reachable again" in err, err[-3000:]
        got = stored(buf)
        assert len(got) == len(set(got)) == 3000 and set(got) == valid_hashes(values)


@pytest.mark.slow
def test_dead_letters_in_flight_through_an_outage_longer_than_the_delivery_timeout_arrive_once_it_ends(
    tmp_path: Path,
) -> None:
    """Reported: after an outage longer than the producer's delivery timeout (120 s) with dead letters in flight,
    the DLQ producer never sent again. The timeout is shortened to 8 s here; the sink drops a producer whose
    batches expired and resends through a new one."""
    from kafka import KafkaConsumer

    from common.schema import InvalidEvent
    from streamer.dlq import KafkaDeadLetters
    from streamer.sources.base import Record
    from streamer.sources.kafka import KafkaSettings
    from tests.kafka_broker import killable_broker

    with killable_broker(tmp_path / "kafka") as k:
        topic = k.broker.topic("src")
        create_topic(k.broker, topic + ".dlq")
        dlq = KafkaDeadLetters(KafkaSettings(k.broker.bootstrap, topic), "g", delivery_timeout_ms=8000)
        err = InvalidEvent("not_json", "$", "not JSON")
        dlq.write(Record(f"kafka:{topic}:0", 0, 1, b"first", topic=topic), err)
        assert dlq.flush() == 1
        k.kill()
        for i in range(1, 4):
            dlq.write(Record(f"kafka:{topic}:0", i, i + 1, b"in flight", topic=topic), err)
        with pytest.raises(Exception):  # noqa: B017 -- whichever timeout kafka-python reports first
            dlq.flush()
        time.sleep(9)  # past the delivery timeout of anything resent meanwhile
        k.resume()
        deadline = time.monotonic() + 90
        while True:  # the streamer's loop retries a failed flush with backoff; so does this
            try:
                assert dlq.flush() == 3
                break
            except AssertionError:
                raise
            except Exception:
                assert time.monotonic() < deadline, "the dead-letter producer never recovered"
                time.sleep(1)
        dlq.close()
        c = KafkaConsumer(topic + ".dlq", bootstrap_servers=k.broker.bootstrap, auto_offset_reset="earliest",
                          consumer_timeout_ms=5000)  # fmt: skip
        offsets = sorted(int(dict(m.headers)["dlq.original.offset"]) for m in c)
        c.close()
        assert set(offsets) == {0, 1, 2, 3}


def test_a_backfill_shows_its_progress_only_when_asked_or_on_a_terminal(kafka: KafkaBroker, tmp_path: Path) -> None:
    """`rankrl stream --stop-when-idle --progress`: a bar of events read against events readable (consumed + lag);
    without the flag and with stderr not a terminal (a daemon's log), no bar."""
    topic, group = kafka.topic("backfill"), kafka.topic("g")
    create_topic(kafka, topic, 2)
    create_topic(kafka, topic + ".dlq")
    produce(kafka, topic, simulated(600, seed=5), 2)
    r = stream(kafka, topic, tmp_path / "b1", group, "--progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backfill: 100%" in r.stderr and "600/600" in r.stderr, r.stderr[-2000:]
    assert len(stored(tmp_path / "b1")) == 600
    r = stream(kafka, topic, tmp_path / "b2", kafka.topic("g"))
    assert r.returncode == 0 and "backfill:" not in r.stderr, r.stderr[-2000:]
    assert len(stored(tmp_path / "b2")) == 600
