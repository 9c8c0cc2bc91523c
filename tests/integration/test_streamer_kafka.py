"""The streamer against the real broker: exact buffer and DLQ contents, SIGKILL restarts, a consumer group,
and SASL/SCRAM logins."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from common.buffer import open_buffer
from common.config import RankrlConfig, load_config
from rankrl.sim import RankingWorld, simulate
from streamer.daemon import build_streamer
from streamer.writer import log_id_hash
from tests.conftest import create_topic
from tests.kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka

MALFORMED = [
    b"not json at all",
    b'{"log_id": "no-state", "created_at": "2026-11-29T10:00:00Z"}',
    b'{"log_id": 42}',
]


def simulated(n: int, seed: int) -> list[bytes]:
    return [orjson.dumps(e) for _, _, _, evs in simulate(RankingWorld(), n, seed=seed) for e in evs]


def with_bad(values: list[bytes], seed: int) -> tuple[list[bytes], list[bytes]]:
    """Valid events with malformed records mixed in: missing fields, wrong types, NaN, not JSON."""
    rng = random.Random(seed)
    bad = list(MALFORMED)
    for v in values[:4]:
        d = orjson.loads(v)
        d["log_id"] = d["log_id"] + "-bad"
        d["state"]["user_features"]["hesitation_count"] = "two"
        bad.append(orjson.dumps(d))
    bad.append(values[5].replace(b'"luxury_affinity":', b'"luxury_affinity":NaN,"x":'))
    mixed = list(values)
    for b in bad:
        mixed.insert(rng.randrange(len(mixed)), b)
    return mixed, bad


def produce(broker: KafkaBroker, topic: str, values: list[bytes], partitions: int, pace_s: float = 0.0) -> None:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    for i, v in enumerate(values):
        p.send(topic, value=v, partition=i % partitions)
        if pace_s and i % 100 == 99:
            p.flush()
            time.sleep(pace_s)
    p.flush(timeout=60)
    p.close()


def stored(buf: Path) -> list[int]:
    return open_buffer(buf).load().column("log_id_hash").tolist()


def valid_hashes(values: list[bytes]) -> set[int]:
    return {log_id_hash(orjson.loads(v)["log_id"]) for v in values}


def config(broker: KafkaBroker, topic: str, buf: Path, group: str, **streamer: object) -> RankrlConfig:
    cli = {
        "streamer": {
            "source": f"kafka://{broker.bootstrap}/{topic}",
            "group_id": group,
            "metrics_port": 0,
            "segment_max_age_s": 0.5,
            **streamer,
        },
        "paths": {"buffer_dir": str(buf)},
    }
    cfg: RankrlConfig = load_config(environ={}, cli=cli)
    return cfg


def test_buffer_holds_exactly_the_valid_and_dlq_exactly_the_bad(kafka: KafkaBroker, tmp_path: Path) -> None:
    topic = kafka.topic("mix")
    create_topic(kafka, topic, partitions=3)
    create_topic(kafka, topic + ".dlq", partitions=1)
    valid = simulated(2000, seed=1)
    mixed, bad = with_bad(valid, seed=1)
    produce(kafka, topic, mixed, partitions=3)
    buf = tmp_path / "buffer"
    reg = CollectorRegistry()
    s = build_streamer(config(kafka, topic, buf, kafka.topic("g")), reg, stop_when_idle_s=3.0)
    assert s.run() == 0
    got = stored(buf)
    assert len(got) == len(set(got)) and set(got) == valid_hashes(valid)
    rejected = "rankrl_streamer_events_rejected_total"
    assert reg.get_sample_value(rejected, {"reason": "not_json"}) == 2  # plain text and the NaN record
    assert reg.get_sample_value(rejected, {"reason": "wrong_type"}) == 5

    c = KafkaConsumer(
        topic + ".dlq",
        bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest",
        group_id=kafka.topic("dlqread"),
        consumer_timeout_ms=5000,
    )
    letters = list(c)
    c.close()
    assert sorted(m.value for m in letters) == sorted(bad)
    for m in letters:
        h = {k: v.decode() for k, v in m.headers}
        assert h["dlq.original.topic"] == topic
        assert int(h["dlq.original.offset"]) >= 0 and h["dlq.error.reason"] and h["dlq.error.field"]
        assert "invalid event" in h["dlq.error.message"]
    committed = open_buffer(buf).manifest().positions
    assert sum(committed.values()) == len(mixed)  # every record, good or bad, is behind the stored positions


def stream_cmd(broker: KafkaBroker, topic: str, buf: Path, group: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rankrl",
        "stream",
        "--source",
        f"kafka://{broker.bootstrap}/{topic}",
        "--buffer",
        str(buf),
        "--group-id",
        group,
        "--metrics-port",
        "0",
        "--set",
        "streamer.segment_max_age_s=0.3",
        "--set",
        "streamer.segment_max_rows=400",
        *extra,
    ]


def test_sigkill_restarts_store_every_event_exactly_once(kafka: KafkaBroker, tmp_path: Path) -> None:
    topic, group, buf = kafka.topic("kill"), kafka.topic("g"), tmp_path / "buffer"
    create_topic(kafka, topic, partitions=3)
    create_topic(kafka, topic + ".dlq", partitions=1)
    values = simulated(12_000, seed=2)
    producer = threading.Thread(target=produce, args=(kafka, topic, values, 3, 0.05))
    producer.start()
    rng = random.Random(2)
    rows_at_kill = []
    # Static membership: each restart takes the killed instance's partitions back without waiting for its session.
    static = ("--set", "streamer.group_instance_id=killer-1", "--set", "streamer.session_timeout_ms=10000")
    for _ in range(3):
        p = subprocess.Popen(stream_cmd(kafka, topic, buf, group, *static), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 5.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        rows_at_kill.append(open_buffer(buf).stats()["rows"] if (buf / "manifest.json").exists() else 0)
    producer.join()
    r = subprocess.run(
        stream_cmd(kafka, topic, buf, group, *static, "--stop-when-idle", "4"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = stored(buf)
    assert len(got) == len(set(got)), "a row was stored twice"
    assert set(got) == valid_hashes(values), f"lost {len(valid_hashes(values) - set(got))}"
    assert any(0 < n < len(values) for n in rows_at_kill), rows_at_kill
    print(f"kafka kills=3 rows_at_kill={rows_at_kill} events={len(values)} stored={len(got)} lost=0 duplicated=0")


def test_two_processes_split_partitions_and_hand_over(kafka: KafkaBroker, tmp_path: Path) -> None:
    topic, group, buf = kafka.topic("group"), kafka.topic("g"), tmp_path / "buffer"
    create_topic(kafka, topic, partitions=4)
    create_topic(kafka, topic + ".dlq", partitions=1)
    values = simulated(10_000, seed=3)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with open(logs[0], "w") as ea, open(logs[1], "w") as eb:
        procs = [subprocess.Popen(stream_cmd(kafka, topic, buf, group), stderr=e) for e in (ea, eb)]
        _run_group(kafka, topic, buf, values, procs)
    a, b = (f.read_text() for f in logs)
    assert "assigned partitions=" in a and "assigned partitions=" in b
    got = stored(buf)
    assert len(got) == len(set(got)) and set(got) == valid_hashes(values)


def _run_group(
    kafka: KafkaBroker, topic: str, buf: Path, values: list[bytes], procs: list[subprocess.Popen[bytes]]
) -> None:
    time.sleep(4.0)  # both joined
    producer = threading.Thread(target=produce, args=(kafka, topic, values, 4, 0.05))
    producer.start()
    time.sleep(3.0)
    procs[0].send_signal(signal.SIGTERM)  # a clean stop hands its partitions to the other member
    assert procs[0].wait(timeout=60) == 0
    producer.join()
    deadline = time.monotonic() + 120
    while open_buffer(buf).stats()["rows"] < len(values) and time.monotonic() < deadline:
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    assert procs[1].wait(timeout=60) == 0


def test_sasl_scram_login(kafka: KafkaBroker, tmp_path: Path) -> None:
    if kafka.sasl_bootstrap is None:
        pytest.fail("this broker has no SASL listener: use the jar broker (ci/kafka/broker.sh) for this test")
    topic = kafka.topic("sasl")
    create_topic(kafka, topic, partitions=1)
    create_topic(kafka, topic + ".dlq", partitions=1)
    values = simulated(500, seed=4)
    produce(kafka, topic, values, partitions=1)
    args = [
        "--source",
        f"kafka://{kafka.sasl_bootstrap}/{topic}",
        "--group-id",
        kafka.topic("g"),
        "--metrics-port",
        "0",
        "--set",
        "streamer.security_protocol=SASL_PLAINTEXT",
        "--set",
        "streamer.sasl_mechanism=SCRAM-SHA-512",
        "--set",
        f"streamer.sasl_username={kafka.scram_user}",
    ]
    ok_buf, bad_buf = tmp_path / "ok", tmp_path / "bad"
    env = {**os.environ, "RANKRL_KAFKA_SASL_PASSWORD": str(kafka.scram_password)}
    r = subprocess.run(
        [sys.executable, "-m", "rankrl", "stream", "--buffer", str(ok_buf), "--stop-when-idle", "3", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert set(stored(ok_buf)) == valid_hashes(values)
    assert str(kafka.scram_password) not in r.stderr  # the secret is never logged

    env["RANKRL_KAFKA_SASL_PASSWORD"] = "wrong-password"
    r = subprocess.run(
        [sys.executable, "-m", "rankrl", "stream", "--buffer", str(bad_buf), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "kafka authentication failed" in r.stderr and "wrong username, password or mechanism" in r.stderr
    assert "wrong-password" not in r.stderr


def _committed(broker: KafkaBroker, group: str, topic: str, partitions: int) -> dict[str, int | None]:
    """The consumer group's committed offsets as the broker has them (read without joining the group)."""
    from kafka import TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {f"kafka:{topic}:{p}": c.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        c.close()


def test_offsets_are_committed_only_after_a_seal_and_equal_the_stored_positions(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    """A `commit()` that did nothing passed every other test: read the group's offsets back from the broker."""
    topic, group = kafka.topic("commit"), kafka.topic("g")
    create_topic(kafka, topic, partitions=2)
    buf = tmp_path / "buffer"
    produce(kafka, topic, simulated(600, seed=4), partitions=2)
    reg = CollectorRegistry()
    s = build_streamer(config(kafka, topic, buf, group, max_retry_s=600.0), reg)
    (buf / "segments").rmdir()
    (buf / "segments").write_bytes(b"")  # a plain file where the segments folder goes: every seal fails (OSError)
    t = threading.Thread(target=s.run)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while (reg.get_sample_value("rankrl_streamer_errors_total", {"kind": "disk"}) or 0) < 2:
            assert time.monotonic() < deadline, "the seal never failed"
            time.sleep(0.2)
        assert reg.get_sample_value("rankrl_streamer_paused") == 1
        assert _committed(kafka, group, topic, 2) == {f"kafka:{topic}:0": None, f"kafka:{topic}:1": None}
        time.sleep(2.5)  # the lag is refreshed every second, seal or not (it waited for a seal that succeeded)
        lags = [reg.get_sample_value("rankrl_streamer_consumer_lag", {"partition": str(p)}) for p in (0, 1)]
        assert None not in lags, "no lag series before the first successful seal"
        assert sum(lags) + reg.get_sample_value("rankrl_streamer_events_consumed_total") == 600  # the true lag
        assert reg.get_sample_value("rankrl_streamer_newest_event_timestamp_seconds") > 1.6e9

        (buf / "segments").unlink()
        (buf / "segments").mkdir()
        while open_buffer(buf).stats()["rows"] < 600:
            assert time.monotonic() < deadline, "the streamer did not recover"
            time.sleep(0.2)
        stored = open_buffer(buf).manifest().positions
        assert sum(stored.values()) == 600
        while _committed(kafka, group, topic, 2) != stored:
            assert time.monotonic() < deadline, f"committed {_committed(kafka, group, topic, 2)} != stored {stored}"
            time.sleep(0.2)
    finally:
        s.stop()
        t.join(60)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("untrusted", "not signed by a CA in streamer.ssl_cafile"),
        ("wrong_host", "does not hold the host name or address connected to"),
        ("bad_key", "the client certificate or key could not be used"),
    ],
)
def test_tls_failures_name_their_cause(kafka: KafkaBroker, tmp_path: Path, case: str, expected: str) -> None:
    """Reported: every TLS failure ended with "Unable to bootstrap", the cause only in kafka-python's own log lines.
    The broker's certificate names kafka.rankrl.test, not 127.0.0.1."""
    if kafka.ssl_bootstrap is None or kafka.ssl_cafile is None:
        pytest.fail("this broker has no SSL listener: use the jar broker (ci/kafka/broker.sh) for this test")
    cafile = {"untrusted": "/etc/ssl/certs/ca-certificates.crt"}.get(case, kafka.ssl_cafile)
    tls = ["--set", "streamer.security_protocol=SSL", "--set", f"streamer.ssl_cafile={cafile}"]
    if case == "bad_key":  # a certificate where the key should be
        tls += [
            "--set",
            f"streamer.ssl_certfile={kafka.ssl_cafile}",
            "--set",
            f"streamer.ssl_keyfile={kafka.ssl_cafile}",
        ]
    cmd = [sys.executable, "-m", "rankrl", "stream", "--source", f"kafka://{kafka.ssl_bootstrap}/t",
           "--buffer", str(tmp_path / "b"), "--metrics-port", "0", *tls]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "kafka TLS handshake with" in last and expected in last, last
