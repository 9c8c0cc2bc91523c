"""Deployment monitoring: alert rules under promtool, both daemons' /metrics under promtool, a real scrape."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rankrl.sim import RankingWorld, write_jsonl

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `apt-get install prometheus` (make test installs it)", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def wait_for(fn, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            out = fn()
            if out:
                return out
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.3)
    raise AssertionError(f"not ready after {timeout}s: {last}")


def test_alert_rules_check_and_unit_tests() -> None:
    r = subprocess.run([tool("promtool"), "check", "rules", str(RULES / "rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([tool("promtool"), "test", "rules", "rules_test.yml"], cwd=RULES, capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"


def stream_cmd(events: Path, port: int, *common: str) -> list[str]:
    return [sys.executable, "-m", "rankrl", "stream", "--source", f"file://{events}", "--metrics-port", str(port),
            "--set", "streamer.segment_max_age_s=0.5", *common]  # fmt: skip


def test_daemons_metrics_pass_promtool_and_a_real_prometheus_scrapes_them(tmp_path: Path) -> None:
    """Two streamers sharing one buffer and a trainer restarted on a registry that holds a decided version (no
    cycle in this process): promtool accepts every /metrics, a real Prometheus scrapes them, every dashboard panel
    has data, and the buffer's rows are counted once, not once per streamer."""
    from rankrl.sim.registry import trained_registry

    trained_registry(tmp_path)  # tmp_path/buffer (3,000 rows) and tmp_path/models (v0001, decided and held)
    e1, e2 = tmp_path / "events1.jsonl", tmp_path / "events2.jsonl"
    write_jsonl(RankingWorld(), str(e1), 500, seed=1)
    write_jsonl(RankingWorld(), str(e2), 300, seed=11)
    sp, sp2, tp, pp = free_port(), free_port(), free_port(), free_port()
    common = ["--set", f"paths.buffer_dir={tmp_path / 'buffer'}", "--set", f"paths.registry_dir={tmp_path / 'models'}"]
    procs = [
        subprocess.Popen(stream_cmd(e1, sp, *common), stderr=subprocess.DEVNULL),
        subprocess.Popen(stream_cmd(e2, sp2, *common), stderr=subprocess.DEVNULL),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankrl",
                "train",
                "--set",
                f"trainer.metrics_port={tp}",
                "--set",
                "trainer.interval_minutes=60",
                *common,
            ],
            stderr=subprocess.DEVNULL,
        ),
    ]
    prom = None
    try:
        for port in (sp, sp2, tp):
            text = wait_for(lambda port=port: fetch(f"http://127.0.0.1:{port}/metrics"))
            r = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
            assert r.returncode == 0, f"port {port}: {r.stdout}{r.stderr}"
        assert "rankrl_streamer_events_appended_total" in fetch(f"http://127.0.0.1:{sp}/metrics")
        trainer_text = fetch(f"http://127.0.0.1:{tp}/metrics")
        assert 'rankrl_trainer_cycles_total{outcome="promoted"}' in trainer_text
        assert 'rankrl_registry_events_total{action="rollback"}' in trainer_text
        # the restarted trainer exports the newest decision from the registry before running any cycle
        assert (
            "rankrl_gate_delta_lower_bound_ratio" in trainer_text
            and "rankrl_gate_min_lift_ratio 0.0002" in trainer_text
        )
        assert 'rankrl_gate_check_passed{check="small_sample"} 0.0' in trainer_text

        cfg = {
            "global": {"scrape_interval": "1s"},
            "rule_files": [str(RULES / "rules.yml")],
            "scrape_configs": [
                {
                    "job_name": "rankrl-streamer",
                    "static_configs": [{"targets": [f"127.0.0.1:{sp}", f"127.0.0.1:{sp2}"]}],
                },
                {"job_name": "rankrl-trainer", "static_configs": [{"targets": [f"127.0.0.1:{tp}"]}]},
            ],
        }
        (tmp_path / "prometheus.yml").write_text(json.dumps(cfg))  # JSON is YAML
        prom = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{pp}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{pp}/api/v1/query?query="

        def query(q: str) -> list:
            data = json.loads(fetch(api + urllib.request.quote(q)))
            assert data["status"] == "success", (q, data)
            return list(data["data"]["result"])

        up = wait_for(
            lambda: [r for r in query("up") if r["value"][1] == "1"] if len(query("up")) == 3 else None, timeout=90
        )
        assert {r["metric"]["job"] for r in up} == {"rankrl-streamer", "rankrl-trainer"}
        appended = wait_for(lambda: query("sum(rankrl_streamer_events_appended_total) == 800"), timeout=60)
        assert float(appended[0]["value"][1]) == 800
        # The buffer panel counts the shared buffer once; a plain sum would count it per streamer.
        rows = wait_for(lambda: query("sum(max by (buffer) (rankrl_streamer_buffer_rows)) == 3800"), timeout=60)
        assert float(rows[0]["value"][1]) == 3800
        assert float(query("sum(rankrl_streamer_buffer_rows)")[0]["value"][1]) > 3800  # each streamer's view

        # Every dashboard panel has data (a panel's targets together; per-partition lag is Kafka's only).
        time.sleep(2)  # rate() windows need two scrapes
        dashboard = json.loads(DASHBOARD.read_text())
        empty = []
        for panel in dashboard["panels"]:
            exprs = [t["expr"] for t in panel["targets"]]
            if not any(query(e) for e in exprs):
                empty.append(f"{panel['title']}: {exprs}")
        assert not empty, "dashboard panels without data:\n" + "\n".join(empty)
    finally:
        for p in ([prom] if prom else []) + procs:
            p.send_signal(signal.SIGTERM)
        for p in ([prom] if prom else []) + procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


def test_every_alert_says_what_happened_what_to_check_and_where_the_runbook_is() -> None:
    import yaml

    rules = [r for g in yaml.safe_load((RULES / "rules.yml").read_text())["groups"] for r in g["rules"]]
    assert rules
    for r in rules:
        a = r.get("annotations", {})
        assert {"summary", "description", "runbook"} <= set(a), f"{r['alert']} lacks {a.keys()}"
        doc, _, anchor = a["runbook"].partition("#")
        path = ROOT / doc
        assert path.is_file(), f"{r['alert']}: runbook {doc} does not exist"
        if anchor:
            headings = {
                re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            }
            assert anchor in headings, f"{r['alert']}: no heading #{anchor} in {doc}"
