"""`rankrl fit` (the original train.py) with every flag, on a small simulated file; and its Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.features import extract_state_vector
from rankrl.sim import RankingWorld, write_jsonl
from trainer.fit import BadLogLine, CQLModel, evaluate_trained_model, load_logs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fit") / "logs.jsonl"
    write_jsonl(RankingWorld(), str(path), 2000, seed=5)
    with open(path, "ab") as f:
        f.write(b"{not json\n")
        f.write(b'{"log_id": "x1", "created_at": "2026-01-01T00:00:00Z"}\n')
    return path


def fit_cmd(logs: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "rankrl", "fit",
        "--input_logs", str(logs), "--output_model", str(tmp / "out" / "cql.d3"), "--epochs", "2",
        "--steps_per_epoch", "15", "--batch_size", "64", "--test_split", "0.25", "--val_split", "0.1",
        "--actor_lr", "1e-4", "--critic_lr", "2e-4", "--conservative_weight", "2.0",
        "--log_level", "INFO", "--log_file", str(tmp / "fit.log"), "--results", str(tmp / "results.json"),
        "--device", "cpu:0", "--set", "model.hidden_units=32,32", *extra,
    ]  # fmt: skip


def run_fit(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_fit_with_every_flag(logs_file: Path, tmp_path: Path) -> None:
    r = run_fit(fit_cmd(logs_file, tmp_path, "--save_processed_logs", "--no_normalize"), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "out" / "cql.d3").stat().st_size > 0
    log_text = (tmp_path / "fit.log").read_text()
    assert "logs.jsonl:2001" in log_text and "logs.jsonl:2002" in log_text  # bad lines named by number
    processed = (tmp_path / "data" / "processed_logs.jsonl").read_bytes().splitlines()
    assert len(processed) == 2000 and all(orjson.loads(line)["reward"] is not None for line in processed)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["rows"] == {"train": 1350, "val": 150, "test": 500}
    assert res["config"]["no_normalize"] is True and res["config"]["model"]["actor_learning_rate"] == 1e-4
    assert res["config"]["model"]["conservative_weight"] == 2.0 and len(res["training_history"]) == 2
    assert "val_action_mse" in res["training_history"][0]
    assert 0 < res["test_metrics"]["conversion_rate"] < 1
    assert {"snips_conversion", "ips_conversion", "weights"} <= set(res["counterfactual"])
    assert {"action_mse", "q_value_mean"} <= set(res["policy_metrics"])

    computed_mean = res["test_metrics"]["mean_reward"]
    # --skip_reward_computation uses the logged rewards: logged ones that differ from what would be computed
    relogged = tmp_path / "relogged.jsonl"
    with open(relogged, "wb") as f:
        for line in processed:
            ev = orjson.loads(line)
            ev["reward"] = 10.0 * ev["reward"] + 3.0
            f.write(orjson.dumps(ev) + b"\n")
    r = run_fit(fit_cmd(relogged, tmp_path, "--skip_reward_computation"), tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    # the same seeded test split: its mean logged reward is the transformed mean, not the computed one
    assert res["test_metrics"]["mean_reward"] == pytest.approx(10.0 * computed_mean + 3.0, rel=1e-6)
    # --on_bad_line fail stops at the first bad line, naming it
    r = run_fit(fit_cmd(logs_file, tmp_path, "--on_bad_line", "fail"), tmp_path)
    assert r.returncode == 1 and "logs.jsonl:2001" in r.stderr


def test_python_api(logs_file: Path, tmp_path: Path) -> None:
    with pytest.raises(BadLogLine, match=":2001:"):
        load_logs(logs_file, on_bad="fail")
    logs = load_logs(logs_file)
    assert len(logs) == 2000
    r = subprocess.run(
        fit_cmd(logs_file, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    model = CQLModel.load(tmp_path / "out" / "cql.d3", device="cpu:0")
    w = model.predict(extract_state_vector(logs[0]["state"]))
    assert w.shape == (7,) and abs(w.sum() - 1) < 1e-6 and (w >= 0).all()
    from common.features import extract_action_vector

    test = logs[:200]
    states = np.stack([extract_state_vector(e["state"], e["ranking_metadata"]) for e in test])
    actions = np.stack([extract_action_vector(e["action"]) for e in test])
    out = evaluate_trained_model(model, states, actions, np.zeros(len(test)), test)
    assert set(out["test_metrics"]) >= {"conversion_rate", "mrr", "precision_at_5", "revenue_per_session"}
