"""`rankrl serve` on a real network (issue 27), through the real process on loopback: tokens with scopes, JSON
only, plausibility limits on outcomes, a writer that survives a stalled disk, bounded heads, bodies and slow
clients, a damaged champion at start, and the contract's mean in every response."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from deploy import decision_log
from deploy.decision_log import FileLog, LogUnavailable
from deploy.registry import ModelRegistry
from tests.deploy.test_decision_path import outcome_for, post
from tests.deploy.test_service import lines, rank_request, serving

RANK, REPORT, BOTH = "r" * 24, "o" * 24, "b" * 24


def tokens(tmp: Path) -> Path:
    p = tmp / "tokens"
    p.write_text(f"# scopes token\nrank {RANK}\noutcome {REPORT}\nrank,outcome {BOTH}\n")
    return p


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_only_tokens_with_the_scope_may_rank_or_report(tmp_path: Path) -> None:
    with serving(tmp_path, "--set", f"serve.tokens_file={tokens(tmp_path)}") as url:
        assert post(url + "/v1/rank", rank_request())[0] == 401
        assert post(url + "/v1/rank", rank_request(), bearer("x" * 24))[0] == 401
        assert post(url + "/v1/rank", rank_request(), bearer(REPORT))[0] == 403
        assert post(url + "/v1/rank", rank_request(log_id="a"), bearer(RANK))[0] == 200
        assert post(url + "/v1/outcome", outcome_for("a"), bearer(RANK))[0] == 403
        assert post(url + "/v1/outcome", outcome_for("a"), bearer(REPORT))[0] == 202
        # a web page's cross-site form post (text/plain, no preflight) is refused whatever it carries
        code, e = post(url + "/v1/outcome", None, {**bearer(BOTH), "content-type": "text/plain"},
                       raw=json.dumps(outcome_for("a")).encode())  # fmt: skip
        assert code == 415 and e["error"] == "media_type"
        # health and metrics stay open to the load balancer and Prometheus
        assert urllib.request.urlopen(url + "/readyz").status == 200
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert 'rankrl_serve_refused_requests_total{reason="unauthenticated"} 2.0' in metrics
        assert 'rankrl_serve_refused_requests_total{reason="forbidden"} 2.0' in metrics
    assert [o["log_id"] for o in lines(tmp_path / "outcomes.jsonl")] == ["a"]
    log_text = (tmp_path / "tokens").read_text()
    assert RANK in log_text  # the fixture holds it; the service's own output never does (checked by serving())


@pytest.mark.slow
def test_serve_beyond_loopback_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "rankrl", "serve", "--models", str(tmp_path / "m"), "--host", "0.0.0.0",
                        "--port", "0", "--decisions", f"file://{tmp_path / 'd.jsonl'}",
                        "--outcomes", f"file://{tmp_path / 'o.jsonl'}"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "serve.tokens_file" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_one_report_cannot_claim_an_implausible_reward(tmp_path: Path) -> None:
    with serving(tmp_path) as url:
        post(url + "/v1/rank", rank_request(log_id="f"))
        forged = {"log_id": "f", "ranking": [f"p{i}" for i in range(10_000)],
                  "ranking_metadata": [{"product_id": f"p{i}", "price": 5000.0} for i in range(10_000)],
                  "outcomes": {"user_action": "purchase", "purchased_ranks": list(range(1, 10_001)),
                               "purchased_total_value": 5e4}}  # fmt: skip
        code, e = post(url + "/v1/outcome", forged)
        assert code == 400 and e["reason"] == "implausible" and e["field"] == "outcomes.purchased_ranks", e
        rich = outcome_for("f")
        rich["outcomes"]["purchased_total_value"] = 1e9
        code, e = post(url + "/v1/outcome", rich)
        assert code == 400 and e["field"] == "outcomes.purchased_total_value", e
        code, e = post(url + "/v1/outcome", outcome_for("f", created_at="2026-12-08T10:00:00"))
        assert code == 400 and e["field"] == "created_at", e  # no zone: which instant is it?
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert 'rankrl_serve_invalid_requests_total{reason="implausible"} 2.0' in metrics
    assert not lines(tmp_path / "outcomes.jsonl")


def test_a_request_that_times_out_never_harms_the_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1-s filesystem stall: the waiting request fails (503) and the writer thread lives on, answering the next."""
    real_fsync = decision_log.os.fsync
    stall = {"left": 1}

    def slow_fsync(fd: int) -> None:
        if stall["left"]:
            stall["left"] -= 1
            time.sleep(1.0)
        real_fsync(fd)

    monkeypatch.setattr(decision_log.os, "fsync", slow_fsync)
    log = FileLog(tmp_path / "d.jsonl")
    try:

        async def scenario() -> None:
            with pytest.raises(LogUnavailable, match="not durable within"):
                await log.write([(b"k", b'{"n":1}')], 0.2)
            await asyncio.sleep(1.2)
            await log.write([(b"k", b'{"n":2}')], 5.0)

        asyncio.run(scenario())
        assert log.alive() and log.ready()
    finally:
        log.close()


def raw_http(url: str, data: bytes, read_s: float = 15.0) -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=read_s) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # refused before all of it was sent: the answer is still there to read
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        return out


@pytest.mark.slow
def test_heads_bodies_and_slow_clients_are_bounded(tmp_path: Path) -> None:
    limits = ["--set", "serve.max_body_bytes=1048576", "--set", "serve.read_timeout_s=1.5",
              "--set", "serve.max_header_bytes=16384"]  # fmt: skip
    with serving(tmp_path, *limits) as url:
        huge_head = b"POST /v1/rank HTTP/1.1\r\nhost: x\r\nx-junk: " + b"a" * 200_000 + b"\r\n\r\n"
        assert raw_http(url, huge_head).startswith(b"HTTP/1.1 431")
        # a chunked body (no content-length) is refused when it passes the limit, not after it is all read
        chunk = b"a" * 65536
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"
        head = (b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
        assert raw_http(url, head + body).startswith(b"HTTP/1.1 413")
        # a client that sends half a head and stops is cut off with 408; one that sends half a body too
        t0 = time.monotonic()
        assert raw_http(url, b"POST /v1/rank HTTP/1.1\r\nhost: x\r\n").startswith(b"HTTP/1.1 408")
        half = b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"
        assert raw_http(url, half).startswith(b"HTTP/1.1 408")
        assert time.monotonic() - t0 < 10
        assert post(url + "/v1/rank", rank_request())[0] == 200  # everyone else is still served
        # pipelined: a second request whose 40 KB body arrives after the first's answer is not taken for a head
        small = json.dumps(rank_request(log_id="pl1")).encode()
        large = json.dumps(rank_request(log_id="pl2", session_id="z" * 40_000)).encode()

        def req(body: bytes) -> bytes:
            return (b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % len(body)) + body  # fmt: skip

        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=15) as s:
            second = req(large)
            s.sendall(req(small) + second[:2000])
            time.sleep(0.3)
            s.sendall(second[2000:])
            got = b""
            while got.count(b"HTTP/1.1 ") < 2 or not got.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        assert got.count(b"HTTP/1.1 200") == 2, got[:300]
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert 'rankrl_serve_refused_requests_total{reason="too_large"} 1.0' in metrics
        assert 'rankrl_serve_refused_requests_total{reason="read_timeout"} 1.0' in metrics


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose champion v0002 was promoted after v0001."""
    from rankrl.sim.registry import trained_registry

    root = trained_registry(tmp_path_factory.mktemp("two"))
    reg = ModelRegistry(root)
    m = reg.manifest("v0001")
    files = {name: root / "v0001" / name for name in m["files"]}
    assert reg.register(files, {k: v for k, v in m.items() if k not in ("files", "version")}) == "v0002"
    reg.promote("v0001", reason="test", force=True)
    reg.promote("v0002", reason="test", force=True)
    return root


@pytest.mark.slow
def test_a_damaged_champion_at_start_serves_the_earlier_one_and_says_so(tmp_path: Path, two_versions: Path) -> None:
    shutil.copytree(two_versions, tmp_path / "models")
    assert ModelRegistry(tmp_path / "models").champion() == "v0002"
    (tmp_path / "models" / "v0002" / "policy.pt").write_bytes(b"damaged")
    with serving(tmp_path) as url:
        code, r = post(url + "/v1/rank", rank_request())
        assert code == 200 and r["policy_version"] == "v0001"
        ready = json.loads(urllib.request.urlopen(url + "/readyz").read())
        assert ready["status"] == "degraded" and "v0002" in ready["warnings"][0] and "v0001" in ready["warnings"][0]
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert "rankrl_serve_policy_fallback 1.0" in metrics
        # repaired by a promotion: served at once, and the warning goes
        ModelRegistry(tmp_path / "models").promote("v0001", reason="repair", force=True)
        deadline = time.time() + 10
        while time.time() < deadline and json.loads(urllib.request.urlopen(url + "/readyz").read())["warnings"]:
            time.sleep(0.2)
        assert json.loads(urllib.request.urlopen(url + "/readyz").read())["status"] == "ready"
        # a running instance whose new champion is damaged keeps serving the one it has, and says so
        (tmp_path / "models" / "champion").write_text(json.dumps({"version": "v0002", "since": time.time()}))
        deadline = time.time() + 10
        while time.time() < deadline and not json.loads(urllib.request.urlopen(url + "/readyz").read())["warnings"]:
            time.sleep(0.2)
        ready = json.loads(urllib.request.urlopen(url + "/readyz").read())
        assert ready["status"] == "degraded" and "still serving v0001" in ready["warnings"][0], ready
        assert post(url + "/v1/rank", rank_request())[1]["policy_version"] == "v0001"


@pytest.mark.slow
def test_every_response_carries_the_mean_that_reproduces_its_log_propensity(tmp_path: Path) -> None:
    from common.exploration import DirichletExploration
    from common.schema import ACTION_KEYS

    with serving(tmp_path) as url:
        code, r = post(url + "/v1/rank", rank_request())
    assert code == 200
    mean = np.array([r["mean"][k] for k in ACTION_KEYS])
    w = np.array([r["weights"][k] for k in ACTION_KEYS])
    assert abs(mean.sum() - 1) < 1e-12
    lp = DirichletExploration(20.0, 1.0).log_density(w[None], mean[None])[0]
    assert abs(lp - r["log_propensity"]) < 1e-9


@pytest.mark.slow
def test_a_client_reproduces_served_log_propensities_from_policy_onnx(tmp_path: Path, two_versions: Path) -> None:
    """What an engine in another language does: run the champion's policy.onnx (onnxruntime) on the features of the
    logged state, apply the contract's density to the served weights: within the contract's tolerances."""
    import onnxruntime as ort
    from scipy import stats

    from common.features import extract_state_vector
    from common.schema import ACTION_KEYS

    shutil.copytree(two_versions, tmp_path / "models")
    ex = json.loads((tmp_path / "models" / "v0002" / "exploration.json").read_text())
    session = ort.InferenceSession(str(tmp_path / "models" / "v0002" / "policy.onnx"),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    with serving(tmp_path) as url:
        answers = [post(url + "/v1/rank", rank_request(log_id=f"c{i}", session_id=str(i)))[1] for i in range(20)]
    logged = {d["log_id"]: d for d in lines(tmp_path / "decisions.jsonl")}
    worst_mean = worst_lp = 0.0
    for r in answers:
        assert r["policy_version"] == "v0002"
        x = extract_state_vector(logged[r["log_id"]]["state"])[None]
        (mean,) = session.run(["weights"], {"state": x})[0].astype(np.float64)
        mean = np.clip(mean, 0, None) / np.clip(mean, 0, None).sum()
        alpha = ex["min_alpha"] + (ex["kappa"] - 7 * ex["min_alpha"]) * mean
        w = np.array([r["weights"][k] for k in ACTION_KEYS])
        worst_mean = max(worst_mean, float(np.abs(mean - [r["mean"][k] for k in ACTION_KEYS]).max()))
        worst_lp = max(worst_lp, abs(stats.dirichlet.logpdf(w / w.sum(), alpha) - r["log_propensity"]))
    assert worst_mean < 1e-6 and worst_lp < 1e-4, (worst_mean, worst_lp)
