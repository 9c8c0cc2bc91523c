"""Request to row: what `rankrl serve` answers is exactly what the joining streamer stores, through the real
`rankrl serve` and `rankrl stream` processes on the embedded default's two JSONL logs (issue 23, one test a row):
clock skew, a state refilled from an outcome, values serve accepts but the join refuses, refused records that
become durable, one log_id ranked twice, logs under rotation and two writers, held unknown outcomes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from common.buffer import open_buffer
from common.decisions import Decision, decode, iso_now
from common.features import state_tuple
from streamer.encode import log_id_hash
from streamer.join import JoinSource
from streamer.sources.base import Record
from tests.deploy.test_service import lines, rank_request, serving
from tests.streamer.test_join import TwoPartitions, dead_letter_reasons

WINDOW, LATENESS = 2.0, 0.5


def post(url: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if text.startswith(b"{") else {"text": text.decode(errors="replace")}


def stream(tmp: Path, *extra: str, idle_s: float = 2.0) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "rankrl", "stream",
        "--decisions", f"file://{tmp / 'decisions.jsonl'}", "--outcomes", f"file://{tmp / 'outcomes.jsonl'}",
        "--buffer", str(tmp / "buffer"), "--metrics-port", "0", "--stop-when-idle", str(idle_s),
        "--set", f"join.window_s={WINDOW}", "--set", f"join.lateness_s={LATENESS}",
        "--set", "streamer.segment_max_age_s=0.3", *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str], timeout: float = 120) -> str:
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return err


def stored(tmp: Path) -> dict[int, dict[str, Any]]:
    """The buffer's rows by log-id hash."""
    w = open_buffer(tmp / "buffer").load()
    cols = {c: w.column(c) for c in ("state", "action", "log_propensity", "converted", "log_id_hash", "revenue")}
    return {int(h): {c: cols[c][i] for c in cols} for i, h in enumerate(cols["log_id_hash"])}


def outcome_for(log_id: str, **kw: Any) -> dict[str, Any]:
    bought = {"user_action": "purchase", "purchased_ranks": [2], "purchased_total_value": 2500.0}
    return {"log_id": log_id, "ranking": ["prod_1", "prod_2", "prod_3"], "outcomes": bought, **kw}


# ---------------------------------------------------------------------------------------------------- row 1
@pytest.mark.slow
def test_a_future_dated_outcome_cannot_erase_the_conversions_of_later_searches(tmp_path: Path) -> None:
    """A search engine whose clock runs 50 minutes ahead: serve refuses its time stamp (400), and one that reaches
    the outcomes log another way cannot move the join's watermark: every later purchase is stored."""
    (tmp_path / "outcomes.jsonl").write_bytes(b"")
    (tmp_path / "decisions.jsonl").write_bytes(b"")
    with serving(tmp_path) as url:
        future = iso_now(time.time() + 50 * 60)
        code, e = post(url + "/v1/outcome", outcome_for("ghost", created_at=future))
        assert code == 400 and e["field"] == "created_at" and e["reason"] == "out_of_range", e
        joiner = stream(tmp_path, idle_s=8.0)
        # the same outcome written straight to the log (a producer that is not serve), read while decisions are quiet
        with open(tmp_path / "outcomes.jsonl", "ab") as f:
            f.write(orjson.dumps(outcome_for("ghost", created_at=future)) + b"\n")
        time.sleep(3.0)
        ids = []
        for i in range(40):
            code, r = post(url + "/v1/rank", rank_request(log_id=f"q{i}"))
            assert code == 200
            ids.append(r["log_id"])
        for lid in ids:
            assert post(url + "/v1/outcome", outcome_for(lid))[0] == 202
    finish(joiner)
    rows = stored(tmp_path)
    assert len(rows) == 40
    assert sum(int(r["converted"]) for r in rows.values()) == 40, "purchases were dropped after the future outcome"
    assert dead_letter_reasons(tmp_path)["unknown_decision"] == 1


# ---------------------------------------------------------------------------------------------------- row 2
@pytest.mark.slow
def test_the_stored_state_is_the_state_the_policy_saw(tmp_path: Path) -> None:
    """The rank request's candidates price the state (10/500/50); the outcome shows only the 500 one. The row keeps
    the state served (min 10, max 500), with the served weights and log-density."""
    req = rank_request(log_id="s1")
    req["ranking_metadata"] = [{"product_id": "a", "price": 10.0}, {"product_id": "b", "price": 500.0},
                               {"product_id": "c", "price": 50.0}]  # fmt: skip
    with serving(tmp_path) as url:
        code, r = post(url + "/v1/rank", req)
        assert code == 200
        shown = {
            "log_id": "s1",
            "ranking": ["b"],
            "ranking_metadata": [{"product_id": "b", "price": 500.0}],
            "outcomes": {"user_action": "purchase", "purchased_ranks": [1], "purchased_total_value": 500.0},
        }
        assert post(url + "/v1/outcome", shown)[0] == 202
    finish(stream(tmp_path))
    (decision,) = lines(tmp_path / "decisions.jsonl")
    cf = decision["state"]["candidate_features"]
    assert (cf["price_min"], cf["price_max"]) == (10.0, 500.0)  # frozen in the decision itself
    row = stored(tmp_path)[log_id_hash("s1")]
    d: Decision = decode(orjson.dumps(decision), Decision)
    assert row["state"].tolist() == np.array(state_tuple(d.state, ()), dtype=np.float32).tolist()
    assert row["state"][15] == 10.0 and row["state"][16] == 500.0
    served = np.array(list(r["weights"].values()))
    assert row["action"].tolist() == (served / served.max() / (served / served.max()).sum()).astype(np.float32).tolist()
    assert row["log_propensity"] == r["log_propensity"] and row["converted"] == 1 and row["revenue"] == 500.0


# ---------------------------------------------------------------------------------------------------- row 3
@pytest.mark.slow
def test_what_the_join_would_refuse_serve_refuses_first(tmp_path: Path) -> None:
    with serving(tmp_path) as url:
        huge = rank_request()
        huge["state"]["session_features"]["query_has_brand"] = 10**20
        code, e = post(url + "/v1/rank", huge)
        assert code == 400 and e["field"] == "state.session_features.query_has_brand", e

        crossed = rank_request()
        crossed["state"]["candidate_features"].update(price_min=90.0, price_max=10.0)
        code, e = post(url + "/v1/rank", crossed)
        assert code == 400 and e["reason"] == "inconsistent" and "price_min" in e["field"], e

        big = rank_request(log_id="big")  # ~1.7 MB of candidates: over the streamer's max_record_bytes (1 MiB)
        big["ranking_metadata"] = [{"product_id": f"p{i:07d}", "price": 1.0, "category": "c" * 150}
                                   for i in range(9_000)]  # fmt: skip
        code, e = post(url + "/v1/rank", big)
        assert code == 400 and e["reason"] == "too_large", e

        fits = rank_request(log_id="fits")  # ~0.6 MB: stored, with an outcome of ~0.6 MB (together over 1 MiB)
        fits["ranking_metadata"] = big["ranking_metadata"][:3_000]
        assert post(url + "/v1/rank", fits)[0] == 200
        shown = [f"p{i:07d}" + "y" * 50 for i in range(9_000)]
        big_outcome = {
            "log_id": "fits",
            "ranking": shown,
            "outcomes": {"user_action": "click", "interacted_ranks": [1]},
        }
        assert post(url + "/v1/outcome", big_outcome)[0] == 202
        # an outcome dated before any window it could count in: refused, never held (it would stall the join)
        code, e = post(url + "/v1/outcome", outcome_for("fits", created_at=946684800.0))
        assert code == 400 and e["field"] == "created_at", e
        code, e = post(url + "/v1/rank/batch", {"requests": [rank_request(), crossed]})
        assert code == 400 and e["field"].startswith("requests[1].state"), e
        assert post(url + "/v1/rank", rank_request(log_id="plain"))[0] == 200
    assert [d["log_id"] for d in lines(tmp_path / "decisions.jsonl")] == ["fits", "plain"]
    finish(stream(tmp_path))
    assert set(stored(tmp_path)) == {log_id_hash("fits"), log_id_hash("plain")}
    assert not dead_letter_reasons(tmp_path)


# ---------------------------------------------------------------------------------------------------- row 4
def records(key: str, values: list[bytes]) -> list[Record]:
    return [Record(key, i, i + 1, v, topic=key) for i, v in enumerate(values)]


def decision_line(log_id: str, lp: float, t: float) -> bytes:
    d = json.loads(json.dumps(lines_of_one_decision()))
    d.update(log_id=log_id, log_propensity=lp, created_at=iso_now(t))
    return orjson.dumps(d)


def lines_of_one_decision() -> dict[str, Any]:
    req = rank_request()
    return {"log_id": "x", "created_at": iso_now(), "state": req["state"], "log_propensity": 1.5,
            "action": {k: 1.0 for k in ("W_COLLAB_POS", "W_COLLAB_NEG", "W_TRAIT", "W_BRAND", "W_WISHLIST",
                                        "W_MARKET_CONV", "W_MARKET_DEAL")},
            "policy_version": "default", "ranking_metadata": req["ranking_metadata"]}  # fmt: skip


def run_join(
    *batches: list[Record], max_waiting: int = 100_000
) -> tuple[list[dict], list[tuple[str, str]], JoinSource]:
    now = [time.time()]
    dead: list[tuple[str, str]] = []
    src = TwoPartitions()
    src.queued = list(batches)
    join = JoinSource(src, lambda r: r.key == "d", lambda r, e: dead.append((e.reason, e.log_id or "")),
                      WINDOW, LATENESS, clock=lambda: now[0], max_waiting=max_waiting)  # fmt: skip
    out = [r for _ in range(len(batches)) for r in join.poll(0)]
    now[0] += 10 * WINDOW
    out += join.poll(0)
    return [orjson.loads(r.value) for r in out if not r.marker and r.value], dead, join


def test_a_refused_decision_that_becomes_durable_later_is_not_stored() -> None:
    """Serve answered 503 (the write timed out) and logged a retraction behind the decision; the write completed
    anyway. The join drops it; the outcome of the engine's retry (same log_id, new weights, answered 200) joins the
    retried decision."""
    t = time.time()
    retract = orjson.dumps({"retract": "a", "created_at": iso_now(t), "log_propensity": 1.5})
    out = orjson.dumps(outcome_for("a", created_at=iso_now(t + 0.5)))
    events, dead, join = run_join(
        records("d", [decision_line("a", 1.5, t), retract, decision_line("a", 2.5, t + 0.1)]),
        records("o", [out]),
    )
    assert [(e["log_id"], e["log_propensity"], e["outcomes"]["user_action"]) for e in events] == [
        ("a", 2.5, "purchase")
    ]
    assert not dead and join.retracted == {"applied": 1, "too_late": 0}
    # an outcome refused the same way is dropped too; the decision alone is stored with "none"
    retract_o = orjson.dumps({"retract": "b", "created_at": iso_now(t), "outcome_id": "o1"})
    o1 = orjson.dumps(outcome_for("b", created_at=iso_now(t + 0.2), outcome_id="o1"))
    events, dead, _ = run_join(records("d", [decision_line("b", 1.0, t)]), records("o", [o1, retract_o]))
    assert [(e["log_id"], e["outcomes"]["user_action"]) for e in events] == [("b", "none")] and not dead


@pytest.mark.slow
def test_a_decision_refused_with_503_leaves_nothing_the_join_stores(tmp_path: Path) -> None:
    """The decisions log fails (a full device), then recovers at the same path: the 503 leaves nothing stored,
    readiness comes back by itself, and the retried search is stored once."""
    real = tmp_path / "decisions-real.jsonl"
    link = tmp_path / "decisions.jsonl"
    link.symlink_to("/dev/full")
    with serving(tmp_path) as url:
        code, e = post(url + "/v1/rank", rank_request(log_id="r1"))
        assert code == 503 and e["error"] == "log_unavailable"
        real.write_bytes(b"")
        tmp = tmp_path / "swap"
        tmp.symlink_to(real)
        os.replace(tmp, link)  # the disk "recovers": the path now names a writable file
        deadline = time.time() + 10
        ready = 0
        while time.time() < deadline and ready != 200:
            try:
                ready = urllib.request.urlopen(url + "/readyz", timeout=2).status
            except urllib.error.HTTPError as err:
                ready = err.code
            time.sleep(0.2)
        assert ready == 200, "readiness did not come back after the log recovered"
        code, r = post(url + "/v1/rank", rank_request(log_id="r1"))
        assert code == 200
        assert post(url + "/v1/outcome", outcome_for("r1"))[0] == 202
    finish(stream(tmp_path))
    rows = stored(tmp_path)
    assert list(rows) == [log_id_hash("r1")] and rows[log_id_hash("r1")]["log_propensity"] == r["log_propensity"]


# ---------------------------------------------------------------------------------------------------- row 5
@pytest.mark.slow
def test_one_log_id_is_one_decision(tmp_path: Path) -> None:
    with serving(tmp_path) as url:
        code, first = post(url + "/v1/rank", rank_request(log_id="once"))
        code2, again = post(url + "/v1/rank", rank_request(log_id="once"))  # a retry after a timeout
        assert code == code2 == 200 and again == first
        other = rank_request(log_id="once")
        other["state"]["user_features"]["luxury_affinity"] = 0.1
        code, e = post(url + "/v1/rank", other)
        assert code == 409 and e["error"] == "conflict", e
        code, e = post(
            url + "/v1/rank/batch", {"requests": [rank_request(log_id="twice"), rank_request(log_id="twice")]}
        )
        assert code == 400 and e["field"] == "requests[1].log_id", e
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert "rankrl_serve_idempotent_replays_total 1.0" in metrics
        assert 'rankrl_serve_refused_requests_total{reason="conflict"} 1.0' in metrics
        assert post(url + "/v1/outcome", outcome_for("once"))[0] == 202
    assert [d["log_id"] for d in lines(tmp_path / "decisions.jsonl")] == ["once"]
    # another instance (its own idempotency memory) decided the same log_id: the join keeps the first, counts the other
    with open(tmp_path / "decisions.jsonl", "ab") as f:
        f.write(decision_line("once", 0.25, time.time()) + b"\n")
    finish(stream(tmp_path))
    row = stored(tmp_path)[log_id_hash("once")]
    assert row["log_propensity"] == first["log_propensity"] and row["converted"] == 1
    assert dead_letter_reasons(tmp_path)["duplicate_decision"] == 1


@pytest.mark.slow
def test_a_log_id_stays_taken_while_the_streamer_would_drop_a_second_decision(tmp_path: Path) -> None:
    """After the join's window a re-ranked log_id would be dropped as a duplicate by the streamer: serve keeps
    refusing it for streamer.dedup_window_s, instead of answering 200 for a decision nobody stores."""
    short = ["--set", "join.window_s=1", "--set", "join.lateness_s=0.5", "--set", "streamer.dedup_window_s=30"]
    with serving(tmp_path, *short) as url:
        assert post(url + "/v1/rank", rank_request(log_id="t1"))[0] == 200
        time.sleep(2.0)  # past window + lateness
        other = rank_request(log_id="t1", session_id="later")
        code, e = post(url + "/v1/rank", other)
        assert code == 409 and e["error"] == "conflict", e


# ---------------------------------------------------------------------------------------------------- row 6
@pytest.mark.slow
def test_logs_survive_rotation_and_refuse_a_second_writer(tmp_path: Path) -> None:
    """logrotate's default (move, then create) under load, with the streamer running: every acknowledged decision
    is in one of the two files and stored once. A second serve on the same logs fails at start, saying why."""
    acked: list[str] = []
    with serving(tmp_path) as url:
        second = subprocess.run(
            [sys.executable, "-m", "rankrl", "serve", "--models", str(tmp_path / "models"), "--port", "0",
             "--decisions", f"file://{tmp_path / 'decisions.jsonl'}", "--outcomes", f"file://{tmp_path / 'o2.jsonl'}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1 and "written by another process" in second.stderr, second.stderr[-2000:]
        joiner = stream(tmp_path, idle_s=8.0)
        deadline = time.time() + 60  # the streamer must hold the file before it moves (see docs/operating.md)
        while not (tmp_path / "buffer").exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)

        def load() -> None:
            for i in range(300):
                code, r = post(url + "/v1/rank", rank_request(log_id=f"rot{i}"))
                if code == 200:
                    acked.append(r["log_id"])

        t = threading.Thread(target=load)
        t.start()
        while len(acked) < 100 and t.is_alive():
            time.sleep(0.005)
        os.rename(tmp_path / "decisions.jsonl", tmp_path / "decisions.jsonl.1")
        (tmp_path / "decisions.jsonl").touch()
        t.join()
    finish(joiner)
    in_files = [d["log_id"] for p in ("decisions.jsonl.1", "decisions.jsonl") for d in lines(tmp_path / p)]
    assert len(acked) == 300 and sorted(in_files) == sorted(acked)
    assert lines(tmp_path / "decisions.jsonl"), "nothing was written to the new file after the rotation"
    got = set(stored(tmp_path))
    missing = {p: [d["log_id"] for d in lines(tmp_path / p) if log_id_hash(d["log_id"]) not in got]
               for p in ("decisions.jsonl.1", "decisions.jsonl")}  # fmt: skip
    assert not any(missing.values()), {p: (len(v), v[:3]) for p, v in missing.items()}


# ---------------------------------------------------------------------------------------------------- row 7
def test_outcomes_for_unknown_ids_are_bounded_in_number_and_time() -> None:
    t = time.time()
    ghosts = [orjson.dumps(outcome_for(f"g{i}", created_at=iso_now(t + 3000))) for i in range(500)]
    events, dead, join = run_join(records("o", ghosts), max_waiting=100)
    assert not events and len(dead) == 500 and {r for r, _ in dead} == {"unknown_decision"}
    assert join.waiting_outcomes == 0 and join.positions()["o"] == 500  # the position moved past every one


@pytest.mark.slow
def test_a_flood_of_future_dated_unknown_outcomes_neither_grows_memory_nor_freezes_the_position(tmp_path: Path) -> None:
    """20,000 outcomes for ids no decision has, dated 50 minutes ahead (a client whose clock runs ahead), then real
    traffic: the real streamer dead-letters every one within join.lateness_s (at most join.max_waiting_outcomes
    waiting), stores the searches, and the outcomes file's stored position reaches its end."""
    future = iso_now(time.time() + 3000)
    (tmp_path / "outcomes.jsonl").write_bytes(
        b"".join(orjson.dumps(outcome_for(f"ghost{i}", created_at=future)) + b"\n" for i in range(20_000))
    )
    (tmp_path / "decisions.jsonl").write_bytes(b"")
    with serving(tmp_path) as url:
        for i in range(20):
            assert post(url + "/v1/rank", rank_request(log_id=f"real{i}"))[0] == 200
            assert post(url + "/v1/outcome", outcome_for(f"real{i}"))[0] == 202
    finish(stream(tmp_path, "--set", "join.max_waiting_outcomes=1000"))
    rows = stored(tmp_path)
    assert len(rows) == 20 and sum(int(r["converted"]) for r in rows.values()) == 20
    assert dead_letter_reasons(tmp_path)["unknown_decision"] == 20_000
    positions = open_buffer(tmp_path / "buffer").manifest().positions
    end = (tmp_path / "outcomes.jsonl").stat().st_size
    assert [v for k, v in positions.items() if k.endswith("outcomes.jsonl")] == [end]


@pytest.mark.slow
@pytest.mark.parametrize("n", [200])
def test_fuzzed_accepted_requests_are_stored_exactly_as_served(tmp_path: Path, n: int) -> None:
    """Random valid requests of every shape the rank schema allows: each one serve answers 200 is stored with the
    served state, weights and log-density, bit for bit; nothing crashes the join."""
    from tests.deploy.fuzz_requests import random_rank_requests

    reqs = random_rank_requests(n, seed=3)
    answers: dict[str, dict] = {}
    with serving(tmp_path) as url:
        for req in reqs:
            code, r = post(url + "/v1/rank", req)
            assert code in (200, 400), r
            if code == 200:
                answers[r["log_id"]] = r
    finish(stream(tmp_path))
    rows = stored(tmp_path)
    assert len(answers) > n // 2 and len(rows) == len(answers)
    decisions = {d["log_id"]: d for d in lines(tmp_path / "decisions.jsonl")}
    for lid, r in answers.items():
        row = rows[log_id_hash(lid)]
        d: Decision = decode(orjson.dumps(decisions[lid]), Decision)
        assert row["state"].tolist() == np.array(state_tuple(d.state, ()), dtype=np.float32).tolist()
        w = np.array(list(r["weights"].values()))
        assert row["action"].tolist() == (w / w.max() / (w / w.max()).sum()).astype(np.float32).tolist()
        assert row["log_propensity"] == r["log_propensity"]
