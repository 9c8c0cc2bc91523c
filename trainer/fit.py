"""The batch path of the original `train.py`: `rankrl fit` and its Python API.

    load_logs(path) ──► rewards (computed, or the logged ones) ──► features ──► test / val / train split
          ──► CQL with a progress bar and per-epoch validation ──► evaluate on test ──► model + results JSON

Python API, as in the original pipeline:

    from trainer.fit import load_logs, CQLModel, evaluate_trained_model
    from common.features import extract_state_vector
    logs = load_logs("data/events.jsonl")
    model = CQLModel.load("models/cql_policy.d3")
    weights = model.predict(extract_state_vector(logs[0]["state"]))          # 7 weights summing to 1
    results = evaluate_trained_model(model, test_states, test_actions, test_rewards, test_logs)
    results["test_metrics"]["conversion_rate"]
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from tqdm import tqdm

from common.config import ModelConfig, RankrlConfig
from common.exploration import DirichletExploration, weights_from_actions
from common.features import extract_batch
from common.ope import estimate, paired_difference, weight_diagnostics
from common.reward import compute_reward
from common.schema import InvalidEvent, SearchLogEvent, parse_event
from trainer.business import business_metrics
from trainer.cycle import load_cql, new_cql, resolve_device
from trainer.data import ArraySampler, TrainingArrays

log = logging.getLogger(__name__)

# `rankrl fit` is the original train.py: its CQL keeps that pipeline's settings (d3rlpy's defaults with
# conservative weight 5 and 256x256 networks), whatever the continuous trainer's defaults become.
ORIGINAL_PIPELINE = RankrlConfig(
    model=ModelConfig(
        conservative_weight=5.0,
        hidden_units=(256, 256),
        initial_temperature=1.0,
        temp_learning_rate=1e-4,
        scale_augmentation=False,
    )
)


class BadLogLine(ValueError):
    pass


def load_logs(path: str | Path, on_bad: str = "skip") -> list[dict[str, Any]]:
    """Events of a JSONL file as dicts (the original API). Bad lines are reported with their line numbers and
    skipped, or raise BadLogLine with `on_bad="fail"`."""
    logs, bad = [], 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                parse_event(line)
                logs.append(orjson.loads(line))
            except InvalidEvent as e:
                bad += 1
                if on_bad == "fail":
                    raise BadLogLine(f"{path}:{lineno}: {e}") from None
                log.warning("skipping %s:%d: %s", path, lineno, e)
    log.info("loaded logs=%d skipped=%d from %s", len(logs), bad, path)
    return logs


class CQLModel:
    """A trained CQL policy: `predict(state_vector)` gives the seven mean weights (summing to 1)."""

    def __init__(self, algo: Any) -> None:
        self.algo = algo

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> CQLModel:
        return cls(load_cql(Path(path), resolve_device(device)))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.algo.save(str(path))

    def predict(self, state: np.ndarray) -> np.ndarray:
        s = np.asarray(state, dtype=np.float32)
        out = weights_from_actions(self.algo.predict(np.atleast_2d(s)))
        return out[0] if s.ndim == 1 else out

    def q_values(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        return np.asarray(self.algo.predict_value(np.asarray(states, np.float32), np.asarray(actions, np.float32)))


def evaluate_trained_model(
    model: CQLModel,
    test_states: np.ndarray,
    test_actions: np.ndarray,
    test_rewards: np.ndarray,
    test_logs: list[dict[str, Any]],
    exploration: DirichletExploration | None = None,
) -> dict[str, Any]:
    """Business metrics of the logged test rows, counterfactual estimates of the model, policy metrics."""
    events = [parse_event(e) for e in test_logs]
    conv = np.array([e.converted for e in events], dtype=float)
    first = np.array(
        [min(e.outcomes.purchased_ranks) if e.converted and e.outcomes.purchased_ranks else 0 for e in events]
    )
    revenue = np.array([e.outcomes.purchased_total_value if e.converted else 0.0 for e in events])
    out: dict[str, Any] = {"test_metrics": business_metrics(conv, first, revenue, np.asarray(test_rewards))}
    mean = model.predict(test_states)
    logp = np.array([np.nan if e.logging_log_density is None else e.logging_log_density for e in events])
    ex = exploration or DirichletExploration()
    if np.isfinite(logp).all():
        w = np.exp(ex.log_density(test_actions, mean) - logp)
        diag = weight_diagnostics(w, conv)
        out["counterfactual"] = {
            "ips_conversion": estimate(conv, w, "ips", bootstrap=2000).to_dict(),
            "snips_conversion": estimate(conv, w, "snips", bootstrap=2000).to_dict(),
            "snips_reward": estimate(np.asarray(test_rewards, float), w, "snips").to_dict(),
            "difference_vs_logging": paired_difference(conv, w, np.ones(len(w))).to_dict(),
            "weights": diag.to_dict(),
        }
    else:
        out["counterfactual"] = {"skipped": "the test logs carry no propensity: importance weights are undefined"}
    q = model.q_values(test_states, mean.astype(np.float32))
    out["policy_metrics"] = {
        "action_mse": float(((mean - test_actions) ** 2).sum(axis=1).mean()),
        "q_value_mean": float(q.mean()),
        "q_value_std": float(q.std()),
        "mean_weights": dict(
            zip(
                ("W_COLLAB_POS", "W_COLLAB_NEG", "W_TRAIT", "W_BRAND", "W_WISHLIST", "W_MARKET_CONV", "W_MARKET_DEAL"),
                mean.mean(axis=0).round(4).tolist(),
                strict=True,
            )
        ),
    }
    return out


@dataclass
class FitOptions:
    input_logs: str
    output_model: str = "models/cql_policy.d3"
    epochs: int = 100
    steps_per_epoch: int | None = None  # default: one pass over the training rows
    test_split: float = 0.2
    val_split: float = 0.2
    skip_reward_computation: bool = False
    save_processed_logs: bool = False
    processed_logs_path: str = "data/processed_logs.jsonl"
    no_normalize: bool = False
    results_path: str = "results/training_results.json"
    on_bad_line: str = "skip"
    device: str = "auto"
    seed: int = 0


def _rewards(events: list[SearchLogEvent], logs: list[dict[str, Any]], cfg: RankrlConfig, skip: bool) -> np.ndarray:
    if not skip:
        return np.array([compute_reward(e, cfg.reward) for e in events], dtype=np.float32)
    missing = [i for i, e in enumerate(events) if e.reward is None]
    if missing:
        raise BadLogLine(
            f"--skip_reward_computation: {len(missing)} logs have no reward "
            f"(first: log_id {events[missing[0]].log_id!r})"
        )
    return np.array([e.reward for e in events], dtype=np.float32)


def fit(opts: FitOptions, cfg: RankrlConfig) -> dict[str, Any]:
    logs = load_logs(opts.input_logs, opts.on_bad_line)
    if len(logs) < 10:
        raise BadLogLine(f"{opts.input_logs}: only {len(logs)} valid logs, too few to train")
    events = [parse_event(e) for e in logs]
    rewards = _rewards(events, logs, cfg, opts.skip_reward_computation)
    if opts.save_processed_logs:
        Path(opts.processed_logs_path).parent.mkdir(parents=True, exist_ok=True)
        with open(opts.processed_logs_path, "wb") as f:
            for d, r in zip(logs, rewards, strict=True):
                f.write(orjson.dumps({**d, "reward": float(r)}) + b"\n")
        log.info("wrote processed logs=%d to %s", len(logs), opts.processed_logs_path)
    states, actions = extract_batch(events)
    rng = np.random.default_rng(opts.seed)
    idx = rng.permutation(len(events))
    n_test = max(1, round(len(idx) * opts.test_split))
    test, rest = idx[:n_test], idx[n_test:]
    n_val = max(1, round(len(rest) * opts.val_split))
    val, train = rest[:n_val], rest[n_val:]
    data = TrainingArrays(states[train], actions[train], rewards[train].reshape(-1, 1))
    device = resolve_device(opts.device)
    algo = new_cql(cfg, data, device, normalize=not opts.no_normalize)
    sampler = ArraySampler(data, seed=opts.seed)
    steps = opts.steps_per_epoch or math.ceil(len(train) / cfg.model.batch_size)
    model = CQLModel(algo)
    history = []
    for epoch in range(1, opts.epochs + 1):
        sums: dict[str, float] = {}
        for _ in tqdm(range(steps), desc=f"epoch {epoch}/{opts.epochs}", leave=False, disable=None):
            for k, v in algo.update(sampler.sample(cfg.model.batch_size)).items():
                sums[k] = sums.get(k, 0.0) + v
        val_mean = model.predict(states[val])
        val_q = model.q_values(states[val], val_mean.astype(np.float32))
        entry = {
            "epoch": epoch,
            **{k: v / steps for k, v in sums.items()},
            "val_action_mse": float(((val_mean - actions[val]) ** 2).sum(axis=1).mean()),
            "val_q_mean": float(val_q.mean()),
        }
        history.append(entry)
        log.info(
            "fit epoch=%d/%d %s", epoch, opts.epochs, " ".join(f"{k}={v:.4f}" for k, v in entry.items() if k != "epoch")
        )
    model.save(opts.output_model)
    results = evaluate_trained_model(
        model,
        states[test],
        actions[test],
        rewards[test],
        [logs[i] for i in test],
        DirichletExploration.from_config(cfg.exploration),
    )
    results.update(
        {
            "model": opts.output_model,
            "rows": {"train": len(train), "val": len(val), "test": len(test)},
            "epochs": opts.epochs,
            "steps_per_epoch": steps,
            "training_history": history,
            "config": {
                "model": cfg.model.__dict__,
                "no_normalize": opts.no_normalize,
                "skip_reward_computation": opts.skip_reward_computation,
            },
        }
    )
    Path(opts.results_path).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.results_path).write_text(json.dumps(results, indent=1, default=float))
    log.info("saved model=%s results=%s", opts.output_model, opts.results_path)
    return results
