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

from common.buffer import ReplayWindow, open_buffer
from common.config import RankrlConfig
from common.exploration import weights_from_actions
from common.gate_report import GateReport
from common.ope import DirichletBehaviourModel
from deploy.registry import ModelRegistry
from deploy.serving import load_policy_mean, load_torchscript
from trainer.data import ArraySampler, TrainingArrays
from trainer.gate import EvaluationData, GateDecision, build_gate
from trainer.shrunk import LinearSoftmaxPolicy, export_shrunk_policy

log = logging.getLogger(__name__)


class NotEnoughData(RuntimeError):
    pass


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


def split_holdout(times: np.ndarray, rows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Training and holdout row indices: the newest `fraction` of `rows` by event time is the holdout (sorted)."""
    order = rows[np.argsort(times[rows], kind="stable")]
    n_hold = max(1, round(len(order) * fraction)) if len(order) else 0
    return np.sort(order[: len(order) - n_hold]), np.sort(order[len(order) - n_hold :])


def fit_logging_model(states: np.ndarray, actions: np.ndarray) -> DirichletBehaviourModel:
    """The behaviour (logging) density model, fitted on the newest 50,000 training rows (never the holdout):
    densities for rows logged without one, and the logger's mean that shrunk steps start from."""
    k = min(len(states), 50_000)
    return DirichletBehaviourModel().fit(states[-k:], actions[-k:])


def finite_rows(window: ReplayWindow) -> np.ndarray:
    """Indices of the window's rows whose every training and evaluation value is finite (NaN log-propensity means
    'not logged' and is allowed). Today's streamer never stores such a row; an older one stored values beyond
    float32 as inf, and one such row made every cycle fail with NaN losses."""
    ok = np.ones(window.rows, dtype=bool)
    for name in ("state", "action", "reward", "revenue", "event_time"):
        col = window.column(name)
        ok &= np.isfinite(col).reshape(len(col), -1).all(axis=1)
    ok &= ~np.isinf(window.column("log_propensity"))
    return np.flatnonzero(ok)


def evaluation_data(window: ReplayWindow, rows: np.ndarray) -> EvaluationData:
    c = {
        n: window.column(n)[rows]
        for n in ("state", "action", "converted", "reward", "log_propensity", "revenue", "first_purchase_rank")
    }
    return EvaluationData(
        states=c["state"],
        actions=c["action"],
        converted=c["converted"].astype(bool),
        reward=c["reward"].astype(np.float64),
        logging_log_density=c["log_propensity"],
        revenue=c["revenue"].astype(np.float64),
        first_purchase_rank=c["first_purchase_rank"],
    )


def run_cycle(
    cfg: RankrlConfig,
    registry: ModelRegistry,
    stop: threading.Event | None = None,
    who: str = "trainer",
) -> CycleResult:
    t0 = time.perf_counter()
    tc = cfg.trainer
    buffer = open_buffer(cfg.paths.buffer_dir)
    window = buffer.load(window=tc.window_s)
    times = window.column("event_time")
    usable = finite_rows(window)
    dropped = int(window.rows - len(usable))
    if dropped:
        log.warning(
            "trainer dropping rows=%d of %d with non-finite values (stored by a rankrl before 0.2's validation)",
            dropped,
            window.rows,
        )
    train_idx, hold_idx = split_holdout(times, usable, tc.holdout_fraction)
    if len(train_idx) < tc.min_train_rows:
        raise NotEnoughData(f"{len(train_idx)} training rows in the window (need {tc.min_train_rows})")
    train = TrainingArrays.from_window(window, train_idx)
    device = resolve_device(tc.device)

    # The champion's checkpoint (or the latest, by config); with no champion yet, the latest registered one:
    # a candidate the gate held still holds what was learnt.
    parent = (registry.champion() if tc.warm_start_from == "champion" else None) or registry.latest()
    if parent is not None:
        algo = load_cql(registry.path(parent, "model.d3"), device)
        steps_before = int(registry.manifest(parent).get("cumulative_steps", 0))
        algo._grad_step = steps_before  # d3rlpy's .d3 does not store it
        import d3rlpy

        d3rlpy.seed(tc.seed + steps_before)  # reproducible sampling of the actor's actions in the updates
        log.info("trainer warm start from=%s cumulative_steps=%d", parent, steps_before)
    else:
        algo = new_cql(cfg, train, device, seed=tc.seed)
        steps_before = 0
        log.info("trainer cold start (no %s yet)", tc.warm_start_from)
    sampler = ArraySampler(train, seed=tc.seed + steps_before)
    losses = train_steps(algo, sampler, tc.steps_per_cycle, tc.steps_per_epoch, stop)

    gate = build_gate(cfg)
    exploration = gate.exploration
    holdout = evaluation_data(window, hold_idx)
    champion = registry.champion()
    # The champion as it is served (its policy.pt: a shrunk step is a mix, not its CQL checkpoint's action).
    champ_mean = load_policy_mean(registry.path(champion, "policy.pt")) if champion else None
    # One behaviour model, fitted on the newest training rows (never the holdout), serves two purposes: the
    # density of holdout rows logged without one, and, with no champion, the logger's mean that shrunk steps
    # start from (exported with a promoted step).
    densities_missing = not np.isfinite(holdout.logging_log_density).all()
    steps_from_logger = champion is None and min(cfg.gate.shrinkage_steps) < 1.0
    logging_model = None
    if densities_missing or steps_from_logger:
        logging_model = fit_logging_model(train.states, train.actions)
    decision: GateDecision = gate.evaluate(
        holdout,
        policy_mean(algo),
        champ_mean,
        behaviour_fit=logging_model if densities_missing else None,
        logging_mean=logging_model.mean if steps_from_logger and logging_model is not None else None,
        seed=tc.seed,
    )
    report = decision.report.with_extras(
        policy={
            "q_value_mean": float(
                np.mean(algo.predict_value(holdout.states[:4096], algo.predict(holdout.states[:4096])))
            ),
            "losses": losses,
        }
    )

    manifest = {
        "parent": parent,
        "champion_at_evaluation": champion,
        "cumulative_steps": steps_before + tc.steps_per_cycle,
        "steps": tc.steps_per_cycle,
        "data_window": {
            "start": float(times.min()),
            "end": float(times.max()),
            "train_rows": len(train_idx),
            "holdout_rows": len(hold_idx),
            "holdout_start": float(times[hold_idx].min()) if len(hold_idx) else None,
            "dropped_non_finite_rows": dropped,
        },
        "offsets": buffer.manifest().positions,
        "config": {"model": cfg.model.__dict__, "exploration": cfg.exploration.__dict__, "trainer": tc.__dict__},
        "exploration": {"family": "dirichlet", "kappa": exploration.kappa, "min_alpha": exploration.min_alpha},
        "device": device,
        "report": report.to_dict(),
    }
    step = decision.step if decision.promote else None
    if step is not None and step < 1.0:
        manifest["served"] = {"step": step, "towards_from": champion or "logging policy (estimated)"}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        algo.save(str(d / "model.d3"))
        algo.save_policy(str(d / "candidate_policy.pt"))
        (d / "exploration.json").write_text(json.dumps(manifest["exploration"]))
        files = {
            "model.d3": d / "model.d3",
            "policy.pt": d / "candidate_policy.pt",
            "exploration.json": d / "exploration.json",
        }
        if step is not None and step < 1.0:
            # What is served is the promoted step, not the full candidate (kept as candidate_policy.pt).
            base: torch.nn.Module
            if champion:
                base = load_torchscript(registry.path(champion, "policy.pt"))
            else:
                assert logging_model is not None and logging_model.coef is not None  # fitted: a step < 1 was tested
                assert logging_model.mu is not None and logging_model.sd is not None
                base = LinearSoftmaxPolicy(logging_model.mu, logging_model.sd, logging_model.coef)
            export_shrunk_policy(base, d / "candidate_policy.pt", step, d / "policy.pt")
            files["policy.pt"] = d / "policy.pt"
            files["candidate_policy.pt"] = d / "candidate_policy.pt"
        version = registry.register(files, manifest, who=who)
    if decision.promote:
        how = "" if step is None or step >= 1.0 else f" (serving the {step:g} step from {champion or 'the logger'})"
        registry.promote(version, reason=f"gate: {report.rule}{how}", who=who, automatic=True)
    else:
        registry.reject(version, reason=decision.label, who=who)
    registry.retain(tc.keep_last)
    dt = time.perf_counter() - t0
    log.info("trainer cycle version=%s parent=%s decision=%s seconds=%.1f", version, parent, decision.label, dt)
    return CycleResult(
        version=version,
        parent=parent,
        decision=decision.label,
        promoted=decision.promote,
        train_rows=len(train_idx),
        holdout_rows=len(hold_idx),
        steps=tc.steps_per_cycle,
        cumulative_steps=steps_before + tc.steps_per_cycle,
        losses=losses,
        seconds=dt,
        report=report,
        dropped_rows=dropped,
    )
