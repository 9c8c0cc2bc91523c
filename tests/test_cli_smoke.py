"""The real `rankrl` command line in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from common.schema import parse_event


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rankrl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_simulate_writes_valid_events(tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    r = run_cli("simulate", "--events", "1000", "--out", str(out), "--seed", "5")
    assert r.returncode == 0, r.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 1000
    events = [parse_event(line) for line in lines]
    assert len({e.log_id for e in events}) == 1000
    assert all(e.logging_log_density is not None for e in events)
    assert "events_per_s=" in r.stderr
    assert "simulate:" not in r.stderr  # stderr is not a terminal here: no bar unless asked

    r = run_cli("simulate", "--events", "1000", "--out", str(out), "--progress")
    assert r.returncode == 0 and "simulate: 100%" in r.stderr and "1000/1000" in r.stderr, r.stderr


def test_help_lists_subcommands() -> None:
    from tests.test_docs import subcommands

    r = run_cli("--help")
    assert r.returncode == 0
    for name in subcommands():
        assert re.search(rf"^\s+{name}\s", r.stdout, re.M), f"rankrl --help does not list {name}"
        sub = run_cli(name, "--help")
        assert sub.returncode == 0 and "usage: rankrl " + name in sub.stdout


def test_version() -> None:
    from rankrl import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"rankrl {__version__}"


def test_bad_usage_exits_2() -> None:
    r = run_cli("simulate")
    assert r.returncode == 2
    assert "--out" in r.stderr


def test_evaluate_and_stream_fail_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rankrl", *args], capture_output=True, text=True, timeout=120)

    missing = run("evaluate", "--candidate", "v0042", "--buffer", str(tmp_path / "nope"), "--models", str(tmp_path))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr and "not a rankrl buffer" in missing.stderr
    bad = run("stream", "--source", "kafka://host", "--buffer", str(tmp_path / "b"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "streamer.source" in bad.stderr


def test_json_output_log_flags_after_the_subcommand_and_config_discovery(tmp_path: Path) -> None:
    import json
    import os

    from deploy.registry import ModelRegistry
    from tests.deploy.test_registry import make

    reg = ModelRegistry(tmp_path / "models")
    v = make(reg, tmp_path)
    reg.promote(v, reason="test")
    r = run_cli("models", "--models", str(reg.root), "--json", "--log-level", "WARNING")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["champion"] == v and [x["version"] for x in doc["versions"]] == [v]
    r = run_cli("status", "--models", str(reg.root), "--buffer", str(tmp_path / "none"), "--json",
                "--log-format", "json")  # fmt: skip
    assert r.returncode == 1
    assert json.loads(r.stdout)["champion"] == v and json.loads(r.stdout)["problems"]
    logged = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    assert logged and logged[-1]["level"] == "ERROR" and "status:" in logged[-1]["message"]

    (tmp_path / "rankrl.toml").write_text("[gate]\nalpha = 0.02\n")
    here = subprocess.run([sys.executable, "-m", "rankrl", "config"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # fmt: skip
    assert "gate.alpha=0.02" in here.stdout.splitlines(), here.stderr
    other = tmp_path / "other.toml"
    other.write_text("[gate]\nalpha = 0.03\n")
    env = {**os.environ, "RANKRL_CONFIG": str(other), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    there = subprocess.run([sys.executable, "-m", "rankrl", "config"], capture_output=True, text=True, cwd=tmp_path,
                           env=env)  # fmt: skip
    assert "gate.alpha=0.03" in there.stdout.splitlines(), there.stderr


def test_help_loads_neither_scipy_nor_torch() -> None:
    """`rankrl --help` answers at once: reading the registry's reports does not load the statistics stack."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "rankrl", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert not loaded & {"scipy", "torch", "d3rlpy"}, sorted(loaded & {"scipy", "torch", "d3rlpy"})
