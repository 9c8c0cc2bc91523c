"""The decision service and the outcome join against the real broker: decisions and outcomes logged to their
topics before the answers, then joined by the streamer into exactly one event per search."""

from __future__ import annotations

import heapq
import http.client
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from common.buffer import open_buffer
from streamer.encode import log_id_hash
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


def join_cmd(kafka: KafkaBroker, dec: str, out: str, buf: Path) -> list[str]:
    """`rankrl stream` joining serve's two topics into `buf` until idle, with a short window."""
    return [sys.executable, "-m", "rankrl", "stream", "--decisions", f"kafka://{kafka.bootstrap}/{dec}",
            "--outcomes", f"kafka://{kafka.bootstrap}/{out}", "--buffer", str(buf), "--metrics-port", "0",
            "--group-id", kafka.topic("g"), "--stop-when-idle", "3",
            "--set", "join.window_s=2", "--set", "join.lateness_s=0.5"]  # fmt: skip


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

    cmd = join_cmd(kafka, dec, out, tmp_path / "buffer")
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


class KeepAlive:
    """One keep-alive HTTP connection to `rankrl serve` (a search engine's client), JSON in and out."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        self.conn.request("POST", path, orjson.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        return r.status, orjson.loads(r.read())


def dead_letters(kafka: KafkaBroker, topic: str) -> list[tuple[str, str]]:
    """(log_id, reason) of every dead letter in `topic`, duplicates kept."""
    c = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                      consumer_timeout_ms=5_000, enable_auto_commit=False)  # fmt: skip
    try:
        return [(orjson.loads(m.value)["log_id"], dict(m.headers)["dlq.error.reason"].decode()) for m in c]
    finally:
        c.close()


@pytest.mark.slow
def test_serve_and_the_join_keep_every_search_exactly_once_across_sigkills(kafka: KafkaBroker, tmp_path: Path) -> None:
    """A search engine ranks through `rankrl serve` (decisions to Kafka) and reports outcomes later: purchases,
    a click then a purchase (merged), the same purchase twice, clicks after the attribution window, outcomes for
    searches that never existed. Meanwhile the joining streamer is SIGKILLed 4 times at random moments and
    restarted. The buffer holds one row per decision with its merged outcome (or "none"); every late and unknown
    outcome is in the DLQ with its reason."""
    window, lateness = 3.0, 1.0
    dec, out = kafka.topic("decisions"), kafka.topic("outcomes")
    create_topic(kafka, dec, partitions=3)
    create_topic(kafka, out, partitions=3)
    create_topic(kafka, dec + ".dlq", partitions=1)
    buf = tmp_path / "buffer"
    cmd = [sys.executable, "-m", "rankrl", "stream", "--decisions", f"kafka://{kafka.bootstrap}/{dec}",
           "--outcomes", f"kafka://{kafka.bootstrap}/{out}", "--buffer", str(buf), "--metrics-port", "0",
           "--group-id", kafka.topic("g"), "--set", f"join.window_s={window}", "--set", f"join.lateness_s={lateness}",
           "--set", "streamer.segment_max_age_s=0.3", "--set", "streamer.segment_max_rows=200",
           "--set", "streamer.group_instance_id=join-killer", "--set", "streamer.session_timeout_ms=10000"]  # fmt: skip
    purchase = {"user_action": "purchase", "purchased_ranks": [1], "purchased_total_value": 199.0,
                "interacted_ranks": [1]}  # fmt: skip
    click = {"user_action": "click", "interacted_ranks": [2]}
    expected: dict[str, str] = {}  # log_id -> what the buffer must say: "converted" or "not"
    late: set[str] = set()
    unknown: set[str] = set()
    due: list[tuple[float, int, dict]] = []  # (wall time to post, tie-break, outcome): a heap
    lock = threading.Lock()
    done = threading.Event()
    failures: list[str] = []  # what the client threads saw go wrong

    with serving(tmp_path, decisions=f"kafka://{kafka.bootstrap}/{dec}",
                 outcomes=f"kafka://{kafka.bootstrap}/{out}") as url:  # fmt: skip

        def outcomes() -> None:  # posts each outcome when it is due, as a search engine reporting later would
            client = KeepAlive(url)
            while not (done.is_set() and not due):
                with lock:
                    item = heapq.heappop(due) if due and due[0][0] <= time.time() else None
                if item is None:
                    time.sleep(0.005)
                    continue
                code, answer = client.post("/v1/outcome", item[2])
                if code != 202:
                    failures.append(f"/v1/outcome {code}: {answer}")

        poster = threading.Thread(target=outcomes)
        poster.start()

        def later(delay: float, body: dict) -> None:
            with lock:
                heapq.heappush(due, (time.time() + delay, len(expected) + len(due) + len(unknown), body))

        def rank() -> None:  # ~100 searches a second for ~12 s, 10 per batch call
            client = KeepAlive(url)
            for tick in range(120):
                code, b = client.post("/v1/rank/batch", {"requests": [rank_request() for _ in range(10)]})
                if code != 200:
                    failures.append(f"/v1/rank/batch {code}: {b}")
                    return
                for r in b["results"]:
                    lid, i = r["log_id"], len(expected)
                    if i % 3 == 0:
                        later(0.3, {"log_id": lid, "ranking": ["prod_1"], "outcomes": purchase})
                    elif i % 3 == 1:  # a click, then the purchase, reported twice: merged into one purchase
                        later(0.2, {"log_id": lid, "ranking": ["prod_1", "prod_2"], "outcomes": click})
                        later(0.6, {"log_id": lid, "ranking": ["prod_1"], "outcomes": purchase})
                        later(0.7, {"log_id": lid, "ranking": ["prod_1"], "outcomes": purchase})
                    if i % 7 == 0:  # after the attribution window: a dead letter, the row keeps what came in time
                        later(window + 2.0, {"log_id": lid, "ranking": ["prod_1", "prod_2"], "outcomes": click})
                        late.add(lid)
                    expected[lid] = "converted" if i % 3 != 2 else "not"
                if tick % 10 == 0:
                    ghost = f"ghost-{tick}"
                    unknown.add(ghost)
                    later(0.1, {"log_id": ghost, "ranking": ["prod_1", "prod_2"], "outcomes": click})
                time.sleep(0.1)

        ranker = threading.Thread(target=rank)
        ranker.start()
        rnd = random.Random(11)
        kills = []
        while ranker.is_alive() or len(kills) < 4:
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rnd.uniform(2.0, 4.5))
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills.append(open_buffer(buf).stats()["rows"] if (buf / "manifest.json").exists() else 0)
        ranker.join()
        done.set()
        poster.join()

    assert not failures, failures[:5]
    r = subprocess.run([*cmd, "--stop-when-idle", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    w = open_buffer(buf).load()
    hashes = w.column("log_id_hash").tolist()
    want = {log_id_hash(lid): v for lid, v in expected.items()}
    converted = dict(zip(hashes, w.column("converted").astype(bool).tolist(), strict=True))
    lost = set(want) - set(hashes)
    twice = len(hashes) - len(set(hashes))
    print(f"serve+join kills={len(kills)} rows_at_kill={kills} decisions={len(want)} stored={len(hashes)} "
          f"lost={len(lost)} duplicated={twice}")  # fmt: skip
    assert not lost and not twice and set(hashes) == set(want)
    wrong = [h for h, v in want.items() if converted[h] != (v == "converted")]
    assert not wrong, f"{len(wrong)} searches stored with the wrong outcome"
    letters = dead_letters(kafka, dec + ".dlq")
    assert {lid for lid, reason in letters if reason == "late_outcome"} == late
    assert {lid for lid, reason in letters if reason == "unknown_decision"} == unknown
    assert {reason for _, reason in letters} == {"late_outcome", "unknown_decision"}
    print(f"dead letters: {len(letters)} for {len(late) + len(unknown)} late or unknown outcomes "
          f"(the Kafka DLQ is at least once across SIGKILL)")  # fmt: skip


def test_a_broker_outage_leaves_every_acknowledged_record_stored_once_and_every_refused_one_absent(
    tmp_path: Path,
) -> None:
    """Searches ranked and reported one at a time while the broker is killed for 8 s: the decisions and outcomes
    answered 503 were still in the producer and reached the topics once the broker came back, followed by their
    retractions. The join stores every 200 once, with its purchase when the outcome got a 202, and none of the 503s."""
    from tests.kafka_broker import killable_broker

    with killable_broker(tmp_path / "kafka") as k:
        kafka = k.broker
        dec, out = kafka.topic("decisions"), kafka.topic("outcomes")
        create_topic(kafka, dec, partitions=2)
        create_topic(kafka, out, partitions=2)
        ranked: dict[str, int] = {}
        reported: dict[str, int] = {}
        stop = threading.Event()
        with serving(tmp_path, "--set", "serve.log_timeout_s=0.5", decisions=f"kafka://{kafka.bootstrap}/{dec}",
                     outcomes=f"kafka://{kafka.bootstrap}/{out}") as url:  # fmt: skip

            def load() -> None:
                i = 0
                while not stop.is_set():
                    lid = f"o{i}"
                    code, _ = post(url + "/v1/rank", rank_request(log_id=lid))
                    ranked[lid] = code
                    if code == 200:
                        body = {"log_id": lid, "ranking": ["prod_1"], "outcomes": {"user_action": "purchase",
                                "purchased_ranks": [1], "purchased_total_value": 199.0}}  # fmt: skip
                        reported[lid] = post(url + "/v1/outcome", body)[0]
                    i += 1
                    time.sleep(0.01)

            t = threading.Thread(target=load)
            t.start()
            while sum(c == 200 for c in ranked.values()) < 100:
                time.sleep(0.05)
            k.kill()
            time.sleep(8)
            k.resume()
            deadline = time.time() + 60
            while time.time() < deadline and sum(c == 200 for c in list(ranked.values())[-20:]) < 20:
                time.sleep(0.2)
            stop.set()
            t.join()
        cmd = join_cmd(kafka, dec, out, tmp_path / "buffer")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    w = open_buffer(tmp_path / "buffer").load()
    hashes = w.column("log_id_hash").tolist()
    ok = {lid for lid, c in ranked.items() if c == 200}
    refused = {lid for lid, c in ranked.items() if c != 200}
    bought = {lid for lid, c in reported.items() if c == 202}
    print(f"outage: ranked={len(ranked)} 200={len(ok)} 503={len(refused)} outcomes 202={len(bought)} "
          f"outcomes 503={len(reported) - len(bought)} stored={len(hashes)}")  # fmt: skip
    assert refused, "the outage refused nothing: it did not test anything"
    assert len(hashes) == len(set(hashes)) and set(hashes) == {log_id_hash(x) for x in ok}
    converted = {h for h, c in zip(hashes, w.column("converted").tolist(), strict=True) if c}
    assert converted == {log_id_hash(x) for x in bought}
