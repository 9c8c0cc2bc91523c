"""One training cycle, called by the daemon and by `rankrl train --once`.

    buffer window ──split by time──► train rows (older)          holdout rows (newest slice)
                                        │                               │
    champion's .d3 (weights, optimizer, │ warm start, or cold start     │
    scalers) + cumulative step ─────────►  CQL: steps of algo.update ──►│ gate: candidate vs champion
                                        │  (SIGTERM between epochs)     │ (or vs the logging policy)
                                        ▼                               ▼
                                 candidate files ────► registry.register(report) ──► promote if PROMOTE

Nothing reaches the registry before the candidate is complete: files are written to a temporary folder and
registered in one step, so a crash leaves the registry and the champion as they were.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.buffer import open_buffer
from common.config import RankrlConfig
from common.exploration import weights_from_actions
from common.gate_report import GateReport
from common.ope import DirichletBehaviourModel
from deploy.portable import export_onnx
from deploy.registry import ModelRegistry
from deploy.serving import load_policy_mean, load_torchscript
from trainer.data import (
    ArraySampler,
    CycleData,
    NotEnoughData,
    TrainingArrays,
    evaluation_data,
    fit_logging_model,
    load_cycle_data,
)
from trainer.gate import GateDecision, build_gate
from trainer.shrunk import LinearSoftmaxPolicy, export_shrunk_policy

log = logging.getLogger(__name__)


class CycleInterrupted(RuntimeError):
    """SIGTERM arrived during training: the cycle stopped between epochs and registered nothing."""


@dataclass
class CycleResult:
    version: str | None
    parent: str | None
    decision: str
    promoted: bool
    train_rows: int
    holdout_rows: int
    steps: int
    cumulative_steps: int
    losses: dict[str, float]
    seconds: float
    report: GateReport
    dropped_rows: int = 0  # non-finite rows left out of the window
    train_seconds: float = 0.0  # of `seconds`, spent in the gradient steps (d3rlpy's update and batch sampling)
    # where `seconds` went: load (window, split), start (warm or cold start), train, gate, export (files, register)
    phase_seconds: dict[str, float] | None = None


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu:0"


def new_cql(cfg: RankrlConfig, train: TrainingArrays, device: str, normalize: bool = True, seed: int = 0) -> Any:
    """A cold-start CQL with the original pipeline's hyperparameters and scalers fitted on the training rows.

    `normalize=False` (the original `--no_normalize`) feeds the raw state features to the networks."""
    import d3rlpy

    d3rlpy.seed(seed)  # reproducible network initialisation (and the actor's sampling after it)
    m = cfg.model
    mean = train.states.mean(axis=0)
    std = train.states.std(axis=0) + 1e-6
    enc = d3rlpy.models.VectorEncoderFactory(hidden_units=list(m.hidden_units))
    algo = d3rlpy.algos.CQLConfig(
        actor_learning_rate=m.actor_learning_rate,
        critic_learning_rate=m.critic_learning_rate,
        conservative_weight=m.conservative_weight,
        batch_size=m.batch_size,
        gamma=m.gamma,
        tau=m.tau,
        n_critics=m.n_critics,
        n_action_samples=m.n_action_samples,
        initial_temperature=m.initial_temperature,
        temp_learning_rate=m.temp_learning_rate,
        actor_encoder_factory=enc,
        critic_encoder_factory=enc,
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(mean=mean, std=std) if normalize else None,
        # weights live on the simplex: a fixed [0, 1] box, identical across warm starts
        action_scaler=d3rlpy.preprocessing.MinMaxActionScaler(
            minimum=np.zeros(7, dtype=np.float32), maximum=np.ones(7, dtype=np.float32)
        ),
        compile_graph=device.startswith("cuda"),
    ).create(device=device)
    algo.create_impl((train.states.shape[1],), train.actions.shape[1])
    return algo


def load_cql(path: Path, device: str) -> Any:
    import d3rlpy

    return d3rlpy.load_learnable(str(path), device=device)


def train_steps(
    algo: Any, sampler: ArraySampler, steps: int, steps_per_epoch: int, stop: threading.Event | None
) -> dict[str, float]:
    """`steps` gradient steps in epochs; returns the last epoch's mean losses. Raises CycleInterrupted between
    epochs when `stop` is set."""
    batch_size = algo.config.batch_size
    losses: dict[str, float] = {}
    done = 0
    while done < steps:
        n = min(steps_per_epoch, steps - done)
        sums: dict[str, float] = {}
        for _ in range(n):
            for k, v in algo.update(sampler.sample(batch_size)).items():
                sums[k] = sums.get(k, 0.0) + v
        done += n
        losses = {k: v / n for k, v in sums.items()}  # the last epoch's mean, over the steps it really ran
        log.info("trainer epoch steps=%d/%d %s", done, steps, " ".join(f"{k}={v:.4f}" for k, v in losses.items()))
        if stop is not None and stop.is_set() and done < steps:
            raise CycleInterrupted(f"stopped after {done} of {steps} steps; nothing registered")
    return losses


def policy_mean(algo: Any) -> Any:
    """The served mean weights of a CQL policy: its action, clipped and normalised onto the simplex."""

    def mean(states: np.ndarray) -> np.ndarray:
        out = np.empty((len(states), 7))
        for s in range(0, len(states), 65_536):
            out[s : s + 65_536] = weights_from_actions(algo.predict(np.asarray(states[s : s + 65_536], np.float32)))
        return out

    return mean


def start_learner(
    cfg: RankrlConfig, registry: ModelRegistry, train: TrainingArrays, device: str
) -> tuple[Any, str | None, int]:
    """(CQL, parent version, cumulative steps before this cycle): warm from the champion's checkpoint (or the
    latest, by config); with no champion yet from the latest registered one, since a candidate the gate held still
    holds what was learnt; cold when the registry is empty."""
    tc = cfg.trainer
    parent = (registry.champion() if tc.warm_start_from == "champion" else None) or registry.latest()
    if parent is None:
        log.info("trainer cold start (no %s yet)", tc.warm_start_from)
        return new_cql(cfg, train, device, seed=tc.seed), None, 0
    algo = load_cql(registry.path(parent, "model.d3"), device)
    steps_before = int(registry.manifest(parent).get("cumulative_steps", 0))
    algo._grad_step = steps_before  # d3rlpy's .d3 does not store it
    import d3rlpy

    d3rlpy.seed(tc.seed + steps_before)  # reproducible sampling of the actor's actions in the updates
    log.info("trainer warm start from=%s cumulative_steps=%d", parent, steps_before)
    return algo, parent, steps_before


def gate_candidate(
    cfg: RankrlConfig, registry: ModelRegistry, algo: Any, data: CycleData, losses: dict[str, float]
) -> tuple[GateDecision, str | None, DirichletBehaviourModel | None]:
    """The gate's decision on the candidate against the champion as served (its policy.pt: a shrunk step is a mix,
    not its checkpoint's action), or against the logging policy; with the champion and the behaviour model used.

    One behaviour model, fitted on the newest training rows (never the holdout), serves two purposes: the density
    of holdout rows logged without one, and, with no champion, the logger's mean that shrunk steps start from."""
    gate = build_gate(cfg)
    holdout = evaluation_data(data.window, data.hold_idx)
    champion = registry.champion()
    champ_mean = load_policy_mean(registry.path(champion, "policy.pt")) if champion else None
    densities_missing = not np.isfinite(holdout.logging_log_density).all()
    steps_from_logger = champion is None and min(cfg.gate.shrinkage_steps) < 1.0
    logging_model = None
    if densities_missing or steps_from_logger:
        logging_model = fit_logging_model(data.train.states, data.train.actions)
    decision = gate.evaluate(
        holdout,
        policy_mean(algo),
        champ_mean,
        behaviour_fit=logging_model if densities_missing else None,
        logging_mean=logging_model.mean if steps_from_logger and logging_model is not None else None,
        seed=cfg.trainer.seed,
    )
    q = algo.predict_value(holdout.states[:4096], algo.predict(holdout.states[:4096]))
    decision.report = decision.report.with_extras(policy={"q_value_mean": float(np.mean(q)), "losses": losses})
    return decision, champion, logging_model


def export_candidate(
    algo: Any,
    out: Path,
    exploration: dict[str, Any],
    step: float | None,
    base: torch.nn.Module | None,
) -> dict[str, Path]:
    """The version's files: the checkpoint, the served policy (the promoted shrunk step's mix when one is, with the
    full candidate kept as candidate_policy.pt), the same served mean as ONNX, the exploration."""
    algo.save(str(out / "model.d3"))
    algo.save_policy(str(out / "candidate_policy.pt"))
    (out / "exploration.json").write_text(json.dumps(exploration))
    files = {
        "model.d3": out / "model.d3",
        "policy.pt": out / "candidate_policy.pt",
        "exploration.json": out / "exploration.json",
    }
    if step is not None and step < 1.0:
        assert base is not None
        export_shrunk_policy(base, out / "candidate_policy.pt", step, out / "policy.pt")
        files["policy.pt"] = out / "policy.pt"
        files["candidate_policy.pt"] = out / "candidate_policy.pt"
    files["policy.onnx"] = export_onnx(files["policy.pt"], out / "policy.onnx")  # what serves, for any language
    return files


def shrink_base(
    registry: ModelRegistry, champion: str | None, logging_model: DirichletBehaviourModel | None
) -> torch.nn.Module:
    """What a promoted shrunk step starts from: the champion's served policy, or the estimated logger."""
    if champion:
        return load_torchscript(registry.path(champion, "policy.pt"))
    assert logging_model is not None and logging_model.coef is not None  # fitted: a step < 1 was tested
    assert logging_model.mu is not None and logging_model.sd is not None
    return LinearSoftmaxPolicy(logging_model.mu, logging_model.sd, logging_model.coef)


def skip_if_nothing_new(cfg: RankrlConfig, registry: ModelRegistry, positions: dict[str, int]) -> None:
    """A cycle on the same data from the same parent with the same settings trains the same candidate again
    (the seed follows the parent's steps): registering it would only fill the registry with copies."""
    latest = registry.latest()
    if latest is None:
        return
    parent = (registry.champion() if cfg.trainer.warm_start_from == "champion" else None) or latest
    m = registry.manifest(latest)
    same_settings = m.get("config", {}).get("trainer") == json.loads(json.dumps(cfg.trainer.__dict__, default=str))
    if m.get("offsets") == positions and m.get("parent") == parent and same_settings:
        raise NotEnoughData(f"no new data since {latest} (same buffer positions, parent {parent}): nothing to learn")


def run_cycle(
    cfg: RankrlConfig,
    registry: ModelRegistry,
    stop: threading.Event | None = None,
    who: str = "trainer",
) -> CycleResult:
    """Load the window, warm-start, train, gate, register; promote or reject. Nothing is registered unless the
    candidate is complete (files go to a temporary folder first)."""
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    mark = t0

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    tc = cfg.trainer
    skip_if_nothing_new(cfg, registry, open_buffer(cfg.paths.buffer_dir).manifest().positions)  # before loading
    data = load_cycle_data(cfg)
    lap("load")
    device = resolve_device(tc.device)
    algo, parent, steps_before = start_learner(cfg, registry, data.train, device)
    sampler = ArraySampler(data.train, seed=tc.seed + steps_before, scale_augmentation=cfg.model.scale_augmentation)
    lap("start")
    losses = train_steps(algo, sampler, tc.steps_per_cycle, tc.steps_per_epoch, stop)
    lap("train")

    decision, champion, logging_model = gate_candidate(cfg, registry, algo, data, losses)
    lap("gate")
    report = decision.report
    step = decision.step if decision.promote else None
    times, hold = data.times, data.hold_idx
    manifest: dict[str, Any] = {
        "parent": parent,
        "champion_at_evaluation": champion,
        "cumulative_steps": steps_before + tc.steps_per_cycle,
        "steps": tc.steps_per_cycle,
        "data_window": {
            "start": float(times.min()),
            "end": float(times.max()),
            "train_rows": len(data.train_idx),
            "holdout_rows": len(hold),
            "holdout_start": float(times[hold].min()) if len(hold) else None,
            "dropped_non_finite_rows": data.dropped_rows,
        },
        "offsets": data.window.positions,  # of the rows loaded, not of a segment sealed since
        "config": {"model": cfg.model.__dict__, "exploration": cfg.exploration.__dict__, "trainer": tc.__dict__},
        "exploration": {"family": "dirichlet", "kappa": cfg.exploration.kappa, "min_alpha": cfg.exploration.min_alpha},
        "device": device,
        "report": report.to_dict(),
    }
    shrunk = step is not None and step < 1.0
    if shrunk:
        manifest["served"] = {"step": step, "towards_from": champion or "logging policy (estimated)"}
    with tempfile.TemporaryDirectory() as tmp:
        base = shrink_base(registry, champion, logging_model) if shrunk else None
        files = export_candidate(algo, Path(tmp), manifest["exploration"], step, base)
        version = registry.register(files, manifest, who=who)
    if decision.promote:
        how = f" (serving the {step:g} step from {champion or 'the logger'})" if shrunk and step is not None else ""
        registry.promote(version, reason=f"gate: {report.rule}{how}", who=who, automatic=True)
    else:
        registry.reject(version, reason=decision.label, who=who)
    registry.retain(tc.keep_last)
    lap("export")
    dt = time.perf_counter() - t0
    train_seconds = phases["train"]
    log.info(
        "trainer cycle version=%s parent=%s decision=%s seconds=%.1f training_share=%.2f %s",
        version,
        parent,
        decision.label,
        dt,
        train_seconds / dt,
        " ".join(f"{k}_s={v:.1f}" for k, v in phases.items()),
    )
    return CycleResult(
        version=version,
        parent=parent,
        decision=decision.label,
        promoted=decision.promote,
        train_rows=len(data.train_idx),
        holdout_rows=len(hold),
        steps=tc.steps_per_cycle,
        cumulative_steps=steps_before + tc.steps_per_cycle,
        losses=losses,
        seconds=dt,
        report=report,
        dropped_rows=data.dropped_rows,
        train_seconds=train_seconds,
        phase_seconds=phases,
    )
