"""`rankrl serve` as a search engine uses it: real HTTP against the real command, decisions logged before the
response, outcomes accepted, bad input named, a log that cannot be written refused, a new champion picked up
without a failed request."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.exploration import DirichletExploration
from common.schema import ACTION_KEYS
from deploy.registry import ModelRegistry
from tests.helpers import original_example_event


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(tmp: Path, *extra: str, decisions: str | None = None, outcomes: str | None = None) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "rankrl", "serve", "--models", str(tmp / "models"), "--port", str(port),
        "--decisions", decisions or f"file://{tmp / 'decisions.jsonl'}",
        "--outcomes", outcomes or f"file://{tmp / 'outcomes.jsonl'}",
        "--set", "serve.reload_interval_s=0.2", *extra,
    ]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                if p.poll() is not None:
                    raise AssertionError(
                        f"serve exited {p.returncode}: {p.stderr.read() if p.stderr else ''}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    assert p.returncode == 0, p.stderr.read() if p.stderr else ""


def post(url: str, body: Any) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def rank_request(**kw: Any) -> dict:
    ev = original_example_event()
    return {"state": ev["state"], "ranking_metadata": ev["ranking_metadata"], **kw}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def test_rank_logs_the_decision_before_answering_and_accepts_outcomes(tmp_path: Path) -> None:
    with serving(tmp_path) as url:
        code, r = post(url + "/v1/rank", rank_request(session_id="sess-1", log_id="search-1"))
        assert code == 200 and r["log_id"] == "search-1" and r["policy_version"] == "default"
        w = np.array([r["weights"][k] for k in ACTION_KEYS])
        assert set(r["weights"]) == set(ACTION_KEYS) and abs(w.sum() - 1) < 1e-9 and (w > 0).all()
        # no champion: the default weights (equal) explored with the configured family; the logged density is
        # exactly the contract's formula at the served weights
        lp = DirichletExploration(20.0, 1.0).log_density(w[None], np.full((1, 7), 1 / 7))[0]
        assert r["log_propensity"] == pytest.approx(lp, abs=1e-9)
        # durable before the response: the line is in the file now
        (d,) = lines(tmp_path / "decisions.jsonl")
        assert d["log_id"] == "search-1" and d["session_id"] == "sess-1" and d["policy_version"] == "default"
        assert d["log_propensity"] == r["log_propensity"] and d["action"] == r["weights"]
        assert d["state"]["user_features"]["luxury_affinity"] == 0.7 and len(d["ranking_metadata"]) == 4

        code, b = post(url + "/v1/rank/batch", {"requests": [rank_request() for _ in range(100)]})
        assert code == 200 and len(b["results"]) == 100 and len({x["log_id"] for x in b["results"]}) == 100
        assert len(lines(tmp_path / "decisions.jsonl")) == 101

        bought = {"user_action": "purchase", "purchased_ranks": [2], "purchased_total_value": 2500.0}
        outcome = {"log_id": "search-1", "ranking": ["prod_1", "prod_2", "prod_3"], "outcomes": bought}
        code, o = post(url + "/v1/outcome", outcome)
        assert code == 202 and o["log_id"] == "search-1" and o["status"] == "accepted" and o["outcome_id"]
        (rec,) = lines(tmp_path / "outcomes.jsonl")
        assert rec["outcomes"]["purchased_ranks"] == [2] and rec["created_at"]  # stamped on receipt

        # bad input: 400 naming the field and the reason, nothing logged
        bad = rank_request()
        bad["state"]["user_features"]["luxury_affinity"] = 7
        code, e = post(url + "/v1/rank", bad)
        assert code == 400 and e["reason"] == "out_of_range" and e["field"] == "state.user_features.luxury_affinity"
        code, e = post(url + "/v1/outcome", {**outcome, "outcomes": {"user_action": "click", "purchased_ranks": [9]}})
        assert code == 400 and e["field"].startswith("outcomes.purchased_ranks")
        assert len(lines(tmp_path / "decisions.jsonl")) == 101 and len(lines(tmp_path / "outcomes.jsonl")) == 1

        with urllib.request.urlopen(url + "/readyz") as r2:
            assert json.loads(r2.read())["status"] == "ready"
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert "rankrl_serve_decisions_logged_total 101.0" in metrics
        assert "rankrl_serve_outcomes_logged_total 1.0" in metrics
        assert 'rankrl_serve_requests_total{code="400",endpoint="rank"} 1.0' in metrics
        assert 'rankrl_serve_policy_info{version="default"} 1.0' in metrics


def test_a_decision_that_cannot_be_logged_is_refused_with_503(tmp_path: Path) -> None:
    with serving(tmp_path, decisions="file:///dev/full") as url:  # every write fails: no space left on device
        code, e = post(url + "/v1/rank", rank_request())
        assert code == 503 and e["error"] == "log_unavailable" and "No space left" in e["detail"]
        try:
            urllib.request.urlopen(url + "/readyz")
            raise AssertionError("readyz should fail while the log fails")
        except urllib.error.HTTPError as err:
            assert err.code == 503
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert 'rankrl_serve_log_failures_total{log="decisions"} 1.0' in metrics


@pytest.fixture(scope="module")
def one_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one registered (not promoted) version, trained for a few steps on simulated traffic."""
    from rankrl.sim.registry import trained_registry

    return trained_registry(tmp_path_factory.mktemp("one"))


def test_a_new_champion_serves_without_a_restart_or_a_failed_request(tmp_path: Path, one_version: Path) -> None:
    import shutil

    shutil.copytree(one_version, tmp_path / "models")
    codes: list[int] = []
    versions: list[str] = []
    stop = threading.Event()
    with serving(tmp_path) as url:

        def client() -> None:
            while not stop.is_set():
                code, r = post(url + "/v1/rank", rank_request())
                codes.append(code)
                versions.append(r.get("policy_version", ""))

        t = threading.Thread(target=client)
        t.start()
        time.sleep(1.0)
        ModelRegistry(tmp_path / "models").promote("v0001", reason="test", force=True)
        deadline = time.time() + 30
        while time.time() < deadline and (not versions or versions[-1] != "v0001"):
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        t.join()
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    assert set(codes) == {200}, f"failed requests during the reload: {sorted(set(codes))}"
    assert versions[0] == "default" and versions[-1] == "v0001"
    assert (
        "rankrl_serve_policy_reloads_total 1.0" in metrics
        and 'rankrl_serve_policy_info{version="v0001"} 1.0' in metrics
    )
    assert len(lines(tmp_path / "decisions.jsonl")) == len(codes)


@pytest.mark.slow  # a process-level run (seconds): the full tier
def test_rankrl_traffic_ranks_through_serve_and_reports_every_outcome(tmp_path: Path) -> None:
    """compose's traffic service: `rankrl traffic` ranks simulated searches through the service and reports each
    user's response later; every reported outcome names a logged decision."""
    with serving(tmp_path) as url:
        r = subprocess.run(
            [sys.executable, "-m", "rankrl", "traffic", "--url", url, "--rate", "40", "--minutes", "0.05",
             "--max-outcome-delay", "0.5"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    decisions, outcomes = lines(tmp_path / "decisions.jsonl"), lines(tmp_path / "outcomes.jsonl")
    assert len(decisions) >= 80 and decisions[0]["policy_version"] == "default"
    assert outcomes and {o["log_id"] for o in outcomes} <= {d["log_id"] for d in decisions}
    done = re.search(r"traffic done searches=(\d+) outcomes_reported=(\d+)", r.stderr)
    assert done and int(done[1]) == len(decisions) and int(done[2]) == len(outcomes), r.stderr[-2000:]
