"""The data a cycle works on: the buffer's window, its split by time, and d3rlpy's mini-batches from its arrays.

`load_cycle_data` drops non-finite rows (loudly) and holds out the newest slice; `evaluation_data` is what the gate
reads; `fit_logging_model` the behaviour density both the trainer and `rankrl evaluate` fit the same way.

Feeding d3rlpy: vectorised mini-batches instead of per-search episode objects.

d3rlpy's `MDPDataset` builds one Python episode object per one-step search (1M searches: ~5 s and ~3.7x the
raw bytes) and samples a batch in a Python loop (~3 ms for 256). Here a window is four contiguous arrays and a
batch is one fancy-index per array; `TransitionMiniBatch` is what `algo.update` consumes. Every search is a
terminal one-step episode: the next observation is the observation itself and `terminals` is 1, so the
discount never applies (it only would if searches of one session were chained).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from d3rlpy.dataset import TransitionMiniBatch

from common.buffer import ReplayWindow, open_buffer
from common.config import RankrlConfig
from common.ope import DirichletBehaviourModel
from trainer.gate import EvaluationData

log = logging.getLogger(__name__)


@dataclass
class TrainingArrays:
    """Contiguous float32 arrays of the rows to train on."""

    states: np.ndarray  # [n, 23]
    actions: np.ndarray  # [n, 7]
    rewards: np.ndarray  # [n, 1]

    @classmethod
    def from_window(cls, window: ReplayWindow, rows: np.ndarray | slice | None = None) -> TrainingArrays:
        sel = slice(None) if rows is None else rows
        return cls(
            states=np.ascontiguousarray(window.column("state")[sel], dtype=np.float32),
            actions=np.ascontiguousarray(window.column("action")[sel], dtype=np.float32),
            rewards=np.ascontiguousarray(window.column("reward")[sel], dtype=np.float32).reshape(-1, 1),
        )

    def __len__(self) -> int:
        return len(self.states)

    @property
    def nbytes(self) -> int:
        return self.states.nbytes + self.actions.nbytes + self.rewards.nbytes


class ArraySampler:
    """Uniform mini-batches of one-step terminal transitions, sampled with one index draw per batch.

    `scale_augmentation`: the ranking, hence every outcome, depends only on the weights' ratios, so a logged row
    (s, a, r) is as true at (s, c·a, r) for any c > 0. Logged actions lie on the simplex while the actor proposes
    points anywhere in the [0, 1]^7 box; rescaling each sampled action so that its largest weight is uniform in
    [0.05, 1] shows the critic the rays through the box the actor moves along, instead of asking it about actions
    it never saw."""

    def __init__(self, data: TrainingArrays, seed: int = 0, scale_augmentation: bool = False) -> None:
        if len(data) == 0:
            raise ValueError("no rows to train on")
        self.data = data
        self.rng = np.random.default_rng(seed)
        self.scale_augmentation = scale_augmentation
        self._ones: dict[int, np.ndarray] = {}

    def sample(self, batch_size: int) -> TransitionMiniBatch:
        idx = self.rng.integers(0, len(self.data), batch_size)
        obs = self.data.states[idx]
        act = self.data.actions[idx]
        if self.scale_augmentation:
            top = np.maximum(act.max(axis=1, keepdims=True), 1e-6)
            act = (act * (self.rng.uniform(0.05, 1.0, (batch_size, 1)) / top)).astype(np.float32)
        ones = self._ones.get(batch_size)
        if ones is None:
            ones = self._ones[batch_size] = np.ones((batch_size, 1), dtype=np.float32)
        return TransitionMiniBatch(
            observations=obs,
            actions=act,
            rewards=self.data.rewards[idx],
            next_observations=obs,  # terminal: never bootstrapped from
            next_actions=act,
            terminals=ones,
            intervals=ones,
            transitions=[],
        )


class NotEnoughData(RuntimeError):
    pass


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


@dataclass
class CycleData:
    """The window a cycle works on: training rows (older) and holdout rows (the newest slice)."""

    window: ReplayWindow
    times: np.ndarray
    train_idx: np.ndarray
    hold_idx: np.ndarray
    train: TrainingArrays
    dropped_rows: int


def load_cycle_data(cfg: RankrlConfig) -> CycleData:
    """The buffer's window, non-finite rows dropped (loudly), split into training and holdout rows by time."""
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
    return CycleData(window, times, train_idx, hold_idx, train, dropped)
