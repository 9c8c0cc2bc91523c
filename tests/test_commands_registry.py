"""The operator's commands (`promote`, `rollback`, `models`, `status`, `config`) run as commands on a small registry."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.registry import ModelRegistry
from tests.deploy.test_registry import make
from tests.test_cli_smoke import run_cli


def small_registry(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    reg = ModelRegistry(root)
    make(reg, tmp_path)  # v0001: the gate said PROMOTE
    make(reg, tmp_path, decision="HOLD", parent="v0001")  # v0002: held
    make(reg, tmp_path, parent="v0001")  # v0003
    return root


def test_promote_refuses_a_held_version_unless_forced_and_rollback_goes_back(tmp_path: Path) -> None:
    models = str(small_registry(tmp_path))
    r = run_cli("promote", "v0001", "--reason", "first", "--models", models)
    assert r.returncode == 0 and "promoted v0001 (was none)" in r.stdout
    r = run_cli("promote", "v0002", "--reason", "try", "--models", models)
    assert r.returncode == 1 and "HOLD" in r.stderr and "--force" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("promote", "v0002", "--reason", "the operator knows better", "--force", "--models", models)
    assert r.returncode == 0 and "promoted v0002 (was v0001)" in r.stdout
    r = run_cli("rollback", "--reason", "regression", "--models", models)
    assert r.returncode == 0 and "rolled back to v0001 (was v0002)" in r.stdout
    assert ModelRegistry(models).champion() == "v0001"
    history = [json.loads(line) for line in (Path(models) / "history.jsonl").read_text().splitlines()]
    assert [h["action"] for h in history] == ["register"] * 3 + ["promote", "promote", "rollback"]
    assert history[4]["forced"] is True and history[3]["forced"] is False
    r = run_cli("promote", "v0099", "--reason", "x", "--models", models)
    assert r.returncode == 1 and "unknown model version" in r.stderr


def test_models_and_status_show_the_champion_and_the_decisions(tmp_path: Path) -> None:
    models = str(small_registry(tmp_path))
    assert run_cli("promote", "v0003", "--reason", "r", "--models", models).returncode == 0
    r = run_cli("models", "--models", models)
    assert r.returncode == 0
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert set(rows) == {"v0001", "v0002", "v0003"}
    assert "champion" in rows["v0003"] and "HOLD:not_significant" in rows["v0002"]
    r = run_cli("status", "--models", models, "--buffer", str(tmp_path / "no-buffer"))
    assert "champion:    v0003" in r.stdout and "last cycle:  v0003 -> PROMOTE" in r.stdout
    assert r.returncode == 1 and "is not a rankrl buffer" in r.stderr  # no buffer: not a healthy answer


def test_config_prints_every_field_with_overrides(tmp_path: Path) -> None:
    toml = tmp_path / "rankrl.toml"
    toml.write_text("[trainer]\nkeep_last = 4\n")
    r = run_cli("config", "--config", str(toml), "--set", "gate.alpha=0.01")
    assert r.returncode == 0
    lines = set(r.stdout.splitlines())
    assert {"trainer.keep_last=4", "gate.alpha=0.01", "exploration.kappa=20.0"} <= lines
    r = run_cli("config", "--set", "gate.alpha=2")
    assert r.returncode == 2 and "gate.alpha" in r.stderr


def test_read_only_commands_create_nothing_and_status_fails_without_a_registry(tmp_path: Path) -> None:
    import subprocess
    import sys

    env_args = ["--models", str(tmp_path / "models")]
    r = subprocess.run([sys.executable, "-m", "rankrl", "status", *env_args, "--buffer", str(tmp_path / "buffer")],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1 and "no model registry at" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "rankrl", "models", *env_args], capture_output=True, text=True,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a read-only command created a folder"
