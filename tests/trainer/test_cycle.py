"""Training cycles on simulator data (CPU, small networks): cold start, warm start, SIGKILL, daemon, serving."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from prometheus_client import CollectorRegistry

from common.config import RankrlConfig, load_config
from common.schema import parse_event
from deploy.portable import OnnxMean
from deploy.registry import ModelRegistry
from deploy.serving import ServingPolicy, load_policy_mean
from rankrl.sim import RankingWorld, simulate
from streamer.encode import event_columns
from streamer.writer import BufferWriter
from trainer.cycle import load_cql, new_cql, run_cycle, train_steps
from trainer.daemon import Trainer
from trainer.data import ArraySampler, TrainingArrays

pytestmark = pytest.mark.slow

SMALL = {
    "model": {"hidden_units": "32,32", "batch_size": 64, "n_action_samples": 4},
    "trainer": {"steps_per_cycle": 40, "steps_per_epoch": 20, "window_s": 1e10, "min_train_rows": 500},
    "gate": {"min_holdout_rows": 500, "min_holdout_conversions": 20, "min_ess": 50, "min_effective_conversions": 5},
}


@pytest.fixture(scope="module")
def buffer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("buffer")
    w = BufferWriter(path)
    for i, (_, _, _, events) in enumerate(simulate(RankingWorld(), 6000, seed=11, batch=3000)):
        for j, e in enumerate(events):
            ev = parse_event(orjson.dumps(e))
            w.append("file:sim", i * 3000 + j, i * 3000 + j + 1, ev, reward=1.0 if ev.converted else 0.0)
        w.seal()
    return path


def config(buffer_dir: Path, models: Path, **extra: dict) -> RankrlConfig:
    cli = {**SMALL, "paths": {"buffer_dir": str(buffer_dir), "registry_dir": str(models)}}
    for k, v in extra.items():
        cli[k] = {**cli.get(k, {}), **v}
    cfg: RankrlConfig = load_config(environ={}, cli=cli)
    return cfg


def train_cmd(buffer_dir: Path, models: Path, *extra: str) -> list[str]:
    """A `rankrl train` that would run for hours: small nets, 100k steps, epochs of `steps_per_epoch`."""
    return [sys.executable, "-m", "rankrl", "train", "--buffer", str(buffer_dir), "--models", str(models),
            "--set", "model.hidden_units=32,32", "--set", "trainer.steps_per_cycle=100000",
            "--set", "trainer.window_s=1e10", *extra]  # fmt: skip


def checkpoint_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            assert_same_state(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)  # type: ignore[arg-type]
    else:
        assert a == b


def test_checkpoint_roundtrip_keeps_weights_optimizer_and_scalers(buffer_dir: Path, tmp_path: Path) -> None:
    from common.buffer import open_buffer

    train = TrainingArrays.from_window(open_buffer(buffer_dir).load())
    cfg = config(buffer_dir, tmp_path / "m")
    algo = new_cql(cfg, train, "cpu:0")
    train_steps(algo, ArraySampler(train), 10, 10, None)
    algo.save(str(tmp_path / "a.d3"))
    algo.save_model(str(tmp_path / "a.pt"))
    loaded = load_cql(tmp_path / "a.d3", "cpu:0")
    loaded.save_model(str(tmp_path / "b.pt"))
    state_a, state_b = checkpoint_state(tmp_path / "a.pt"), checkpoint_state(tmp_path / "b.pt")
    assert any("optim" in k for k in state_a)  # optimizer state is part of the checkpoint
    assert_same_state(state_a, state_b)
    np.testing.assert_array_equal(loaded.config.observation_scaler.mean, algo.config.observation_scaler.mean)
    x = train.states[:5]
    np.testing.assert_allclose(loaded.predict(x), algo.predict(x), rtol=1e-6)


def test_two_cycles_cold_then_warm(buffer_dir: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    cfg = config(buffer_dir, tmp_path / "models")
    r1 = run_cycle(cfg, reg)
    assert r1.parent is None and r1.version == "v0001"
    assert r1.report.champion.policy == "logging"  # no champion yet: judged against the logger
    assert r1.train_rows + r1.holdout_rows == 6000 and r1.holdout_rows == 1800
    m1 = reg.manifest("v0001")
    assert m1["cumulative_steps"] == 40
    assert set(m1["files"]) == {"model.d3", "policy.pt", "policy.onnx", "exploration.json"}
    assert m1["data_window"]["holdout_start"] >= m1["data_window"]["start"]
    r2 = run_cycle(cfg, reg)
    assert r2.parent == "v0001" and r2.cumulative_steps == 80  # the step count continues across warm starts
    assert reg.manifest("v0002")["parent"] == "v0001"
    actions = [h["action"] for h in reg.history()]
    assert actions.count("register") == 2 and len(actions) == 4  # each register is followed by a decision

    # the operator's view of the same comparison: rankrl evaluate prints the report, writes JSON and a PNG
    out = tmp_path / "eval"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankrl",
            "evaluate",
            "--buffer",
            str(buffer_dir),
            "--models",
            str(tmp_path / "models"),
            "--candidate",
            "v0002",
            "--champion",
            "v0001",
            "--out",
            str(out),
            "--set",
            "trainer.window_s=1e10",
            "--set",
            "gate.min_holdout_rows=500",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "decision:" in r.stdout and "candidate SNIPS" in r.stdout and "checks:" in r.stdout
    report = orjson.loads((out / "evaluation_report.json").read_bytes())
    assert report["models"] == {"candidate": "v0002", "champion": "v0001"}
    assert (out / "evaluation.png").read_bytes()[:4] == b"\x89PNG"

    # scripted: --json prints the report as one JSON document; --progress draws the bootstrap's bar on stderr
    r = subprocess.run(
        [
            *(sys.executable, "-m", "rankrl", "evaluate", "--buffer", str(buffer_dir)),
            *("--models", str(tmp_path / "models"), "--candidate", "v0002", "--champion", "logging"),
            *("--out", str(out), "--json", "--progress", "--set", "trainer.window_s=1e10"),
            *("--set", "gate.min_holdout_rows=500", "--set", "gate.bootstrap=always"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = orjson.loads(r.stdout)
    assert report["models"] == {"candidate": "v0002", "champion": "logging policy"}
    assert report["decision"] in ("PROMOTE", "HOLD")
    replicates = [int(n) for n in re.findall(r"bootstrap: (\d+)replicate", r.stderr)]
    assert replicates and max(replicates) >= 2000, r.stderr[-2000:]


def test_a_tampered_checkpoint_is_refused_before_it_is_unpickled(buffer_dir: Path, tmp_path: Path) -> None:
    """Reported: a crafted model.d3 with its sha256 recomputed in the manifest ran code at the next warm start.
    The trainer now refuses the version (the manifest differs from the one registered), with the cause and no
    traceback, and the pickle never runs."""
    import pickle

    from deploy.registry import sha256_of

    models = tmp_path / "models"
    run_cycle(config(buffer_dir, models), ModelRegistry(models))
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    (models / "v0001" / "model.d3").write_bytes(pickle.dumps(Evil()))
    manifest = json.loads((models / "v0001" / "manifest.json").read_text())
    manifest["files"]["model.d3"] = sha256_of(models / "v0001" / "model.d3")
    (models / "v0001" / "manifest.json").write_text(json.dumps(manifest))
    cmd = train_cmd(buffer_dir, models, "--once", "--set", "trainer.warm_start_from=latest")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "trainer cycle failed: model v0001: manifest.json was changed after registration" in r.stderr
    assert "Traceback" not in r.stderr and not marker.exists()


def test_sigkill_during_training_leaves_registry_consistent(buffer_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    cfg = config(buffer_dir, models)
    reg = ModelRegistry(models)
    run_cycle(cfg, reg)
    reg.promote("v0001", reason="test baseline", force=True)
    before = (reg.versions(), reg.champion(), len(reg.history()))
    cmd = train_cmd(buffer_dir, models, "--once", "--set", "trainer.steps_per_epoch=50")
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) as p:
        assert p.stderr is not None
        for line in p.stderr:
            if "trainer epoch" in line:  # training is under way
                break
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (reg.versions(), reg.champion(), len(reg.history())) == before
    assert not list(models.glob(".tmp-*"))
    r = run_cycle(cfg, reg)  # the next cycle succeeds and warm-starts from the champion
    assert r.parent == "v0001" and r.version == "v0002"


def test_sigterm_stops_between_epochs_without_registering(buffer_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    cmd = train_cmd(buffer_dir, models, "--set", "trainer.steps_per_epoch=20", "--set", "trainer.metrics_port=0")
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) as p:
        assert p.stderr is not None
        for line in p.stderr:
            if "trainer epoch" in line:
                break
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rest = p.stderr.read()
        assert p.wait(timeout=120) == 0
    assert time.monotonic() - t0 < 60
    assert "interrupted" in rest and "nothing registered" in rest
    assert ModelRegistry(models).versions() == []


def test_daemon_cycle_metrics_and_serving(buffer_dir: Path, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    t = Trainer(config(buffer_dir, tmp_path / "models"), registry)
    r = t.cycle()
    assert r is not None
    outcome = "promoted" if r.promoted else "held"
    assert registry.get_sample_value("rankrl_trainer_cycles_total", {"outcome": outcome}) == 1
    assert registry.get_sample_value("rankrl_trainer_gradient_steps_total") == 40
    assert registry.get_sample_value("rankrl_trainer_rows", {"split": "holdout"}) == 1800
    assert registry.get_sample_value("rankrl_trainer_last_success_timestamp_seconds") > 0

    reg = t.models
    if not r.promoted:
        reg.promote(r.version, reason="serving test", force=True)  # type: ignore[arg-type]
    serving = ServingPolicy.from_registry(reg.root, seed=0)
    weights, logp = serving.act(np.zeros(23, dtype=np.float32) + 1.0)
    assert weights.shape == (7,) and abs(weights.sum() - 1) < 1e-9 and np.isfinite(logp)
    assert serving.version == r.version
    # a new champion is picked up on the next call, without a restart
    t.cycle()
    time.sleep(0.01)
    reg.promote("v0002", reason="serving reload", force=True)
    serving.act(np.ones(23, dtype=np.float32))
    assert serving.version == "v0002"


def test_a_promoted_shrunk_step_is_what_serves(buffer_dir: Path, tmp_path: Path) -> None:
    # A margin far below zero and loose diagnostics make the first step pass whatever was learnt: the test is
    # about what gets registered and served, not about the decision.
    loose = {"min_lift": -1.0, "min_ess": 1, "min_ess_fraction": 1e-6, "max_weight_share": 1.0,
             "max_pareto_k": 100.0, "max_mean_weight_deviation": 100.0, "shrinkage_steps": "0.25"}  # fmt: skip
    models = tmp_path / "models"
    cfg = config(buffer_dir, models, gate=loose)
    r = run_cycle(cfg, ModelRegistry(models))
    reg = ModelRegistry(models)
    assert r.promoted and reg.champion() == r.version
    manifest = reg.manifest(r.version)
    assert manifest["served"] == {"step": 0.25, "towards_from": "logging policy (estimated)"}
    assert r.report.promoted_step == 0.25 and r.report.steps[0].step == 0.25
    assert "serving the 0.25 step" in reg.history()[-1]["reason"]
    # policy.pt serves the step; candidate_policy.pt is the full candidate; both verified by checksum
    served = ServingPolicy.from_registry(models)
    states = RankingWorld().contexts(200, np.random.default_rng(3)).states
    full = load_policy_mean(reg.path(r.version, "candidate_policy.pt"))(states)
    step = served.mean(states)
    assert np.allclose(step.sum(axis=1), 1.0)
    assert not np.allclose(step, full, atol=1e-3)
    # policy.onnx is the served step too (a mix of two networks), run by onnxruntime: what a non-Python engine gets
    assert "policy.onnx" in manifest["files"]
    assert np.allclose(OnnxMean(reg.path(r.version, "policy.onnx"))(states), step, atol=1e-5)
    # the next cycle warm-starts from the full checkpoint and gates against the champion as served
    r2 = run_cycle(config(buffer_dir, models, gate={**loose, "min_lift": 1.0}), ModelRegistry(models))
    assert r2.parent == r.version and not r2.promoted
    assert reg.champion() == r.version


def test_logs_without_propensities_use_a_behaviour_model_fitted_on_training_rows(tmp_path: Path) -> None:
    buf = tmp_path / "buffer"
    w = BufferWriter(buf)
    for _, _, _, events in simulate(RankingWorld(), 4000, seed=12, log_propensity=False):
        for j, e in enumerate(events):
            ev = parse_event(orjson.dumps(e))
            assert ev.logging_log_density is None
            w.append("file:sim", j, j + 1, ev, reward=1.0 if ev.converted else 0.0)
    w.seal()
    models = tmp_path / "models"
    r = run_cycle(config(buf, models), ModelRegistry(models))
    assert r.report.weights_source == "estimated"
    # every holdout row is evaluated: the model was fitted on training rows, not on a slice of the holdout
    assert r.report.evaluated_rows == r.report.holdout_rows == r.holdout_rows
    assert not r.report.behaviour_model["deterministic"]


class _ConstantLossAlgo:
    """Stands in for d3rlpy: every update reports the same losses."""

    class config:
        batch_size = 8

    def update(self, batch: object) -> dict[str, float]:
        return {"critic_loss": 2.0, "actor_loss": -1.0}


def test_reported_loss_is_the_mean_over_the_steps_the_last_epoch_ran() -> None:
    """1,200 steps in epochs of 500: the last epoch runs 200 steps; its mean is not its sum over 500."""
    data = TrainingArrays(
        np.zeros((10, 23), np.float32), np.full((10, 7), 1 / 7, np.float32), np.zeros((10, 1), np.float32)
    )
    losses = train_steps(_ConstantLossAlgo(), ArraySampler(data), steps=1200, steps_per_epoch=500, stop=None)
    assert losses == {"critic_loss": 2.0, "actor_loss": -1.0}


def test_a_window_with_non_finite_rows_still_trains(tmp_path: Path) -> None:
    """Rows an older streamer stored as inf (values beyond float32) are dropped loudly; the cycle trains."""
    buf = tmp_path / "buffer"
    w = BufferWriter(buf)
    evs = [parse_event(orjson.dumps(e)) for _, _, _, b in simulate(RankingWorld(), 3000, seed=21) for e in b]
    cols = event_columns(evs, [1.0 if e.converted else 0.0 for e in evs])
    cols["state"][::300, 13] = np.inf  # price_mean = 1e39, as stored before validation bounded it
    cols["revenue"][5] = np.inf
    n = len(evs)
    w.append_columns(["file:sim"] * n, list(range(n)), list(range(1, n + 1)), cols)
    w.seal()
    cfg = config(buf, tmp_path / "models")
    registry = ModelRegistry(tmp_path / "models")
    r = run_cycle(cfg, registry)
    assert r.dropped_rows == 11
    assert r.train_rows + r.holdout_rows == n - 11
    assert all(np.isfinite(v) for v in r.losses.values())
    assert registry.manifest(r.version)["data_window"]["dropped_non_finite_rows"] == 11


def test_evaluate_decides_what_the_trainer_decided(buffer_dir: Path, tmp_path: Path) -> None:
    """`rankrl evaluate` builds the trainer's gate (shrunk steps included) and the same holdout."""
    from trainer.evaluate import evaluate_models

    cfg = config(buffer_dir, tmp_path / "models")
    r = run_cycle(cfg, ModelRegistry(tmp_path / "models"))
    d = evaluate_models(cfg, r.version, "logging")  # the cycle had no champion: the logger was its baseline
    assert d.label == r.decision
    assert d.report.difference.lcb == pytest.approx(r.report.difference.lcb, abs=1e-9)


def test_train_once_says_promoted_or_held_in_its_exit_code_and_json(buffer_dir: Path, tmp_path: Path) -> None:
    """Scripts tell a promotion from a hold without parsing logs: exit 0 promoted, 3 held; --json the evidence."""
    models = tmp_path / "models"
    held = train_cmd(buffer_dir, models, "--once", "--json", "--set", "trainer.steps_per_cycle=20",
                     "--set", "gate.min_holdout_rows=1000000000")  # fmt: skip
    r = subprocess.run(held, capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["version"] == "v0001" and out["promoted"] is False and out["decision"].startswith("HOLD")
    assert "small_sample" in out["reasons"]
    r = subprocess.run(train_cmd(tmp_path / "no-buffer", models, "--once", "--json"), capture_output=True, text=True)
    assert r.returncode == 1 and json.loads(r.stdout) is None


def test_a_restarted_trainer_reports_its_last_success_from_the_registry(buffer_dir: Path, tmp_path: Path) -> None:
    """Reported: rankrl_trainer_last_success_timestamp_seconds started at 0 after every restart, so the "no successful
    cycle" alert paged after each one."""
    from prometheus_client import CollectorRegistry

    from trainer.daemon import Trainer

    cfg = config(buffer_dir, tmp_path / "models", trainer={"steps_per_cycle": 20})
    run_cycle(cfg, ModelRegistry(tmp_path / "models"))
    registered = ModelRegistry(tmp_path / "models").history()[0]["time"]
    reg = CollectorRegistry()
    Trainer(cfg, reg)  # a restart: no cycle run in this process yet
    assert reg.get_sample_value("rankrl_trainer_last_success_timestamp_seconds") == registered


def test_a_cycle_with_nothing_new_registers_no_copy(buffer_dir: Path, tmp_path: Path) -> None:
    """Reported: held cycles on the same data, from the same parent, registered identical copies (and pushed the
    rollback target out of retention)."""
    from trainer.data import NotEnoughData

    cfg = config(buffer_dir, tmp_path / "models", trainer={"steps_per_cycle": 20})
    reg = ModelRegistry(tmp_path / "models")
    run_cycle(cfg, reg)
    reg.promote("v0001", reason="test", force=True)
    assert run_cycle(cfg, reg).parent == "v0001"  # a new parent: training goes on from it
    with pytest.raises(NotEnoughData, match="no new data since v0002"):
        run_cycle(cfg, reg)  # from the champion again, on the same rows: v0002 once more
    assert reg.versions() == ["v0001", "v0002"]


def test_rows_sealed_during_a_cycle_are_trained_on_by_the_next(buffer_dir: Path, tmp_path: Path) -> None:
    """A cycle records the buffer positions of the rows it loaded, not those of a segment the streamer sealed while
    it trained: otherwise the next cycle saw "no new data" and those rows were never learned from."""
    import shutil

    import trainer.cycle

    buf = tmp_path / "buffer"
    shutil.copytree(buffer_dir, buf)
    cfg = config(buf, tmp_path / "models", trainer={"steps_per_cycle": 20})
    reg = ModelRegistry(tmp_path / "models")
    real_train_steps = trainer.cycle.train_steps

    def train_while_the_streamer_seals(*args, **kwargs):  # type: ignore[no-untyped-def]
        w = BufferWriter(buf)
        for _, _, _, events in simulate(RankingWorld(), 500, seed=12, batch=500):
            for k, e in enumerate(events):
                ev = parse_event(orjson.dumps(e))
                w.append("file:sim", 6000 + k, 6001 + k, ev, reward=1.0 if ev.converted else 0.0)
        w.seal()
        return real_train_steps(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer.cycle, "train_steps", train_while_the_streamer_seals)
        first = run_cycle(cfg, reg)
    assert reg.manifest(first.version)["offsets"] == {"file:sim": 6000}  # what it loaded
    second = run_cycle(cfg, reg)  # the 500 rows sealed meanwhile are new to it
    assert reg.manifest(second.version)["offsets"] == {"file:sim": 6500}
