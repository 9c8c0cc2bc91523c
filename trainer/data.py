"""Feeding d3rlpy from the buffer's arrays: vectorised mini-batches instead of per-search episode objects.

d3rlpy's `MDPDataset` builds one Python episode object per one-step search (1M searches: ~5 s and ~3.7x the
raw bytes) and samples a batch in a Python loop (~3 ms for 256). Here a window is four contiguous arrays and a
batch is one fancy-index per array; `TransitionMiniBatch` is what `algo.update` consumes. Every search is a
terminal one-step episode: the next observation is the observation itself and `terminals` is 1, so the
discount never applies (it only would if searches of one session were chained).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from d3rlpy.dataset import TransitionMiniBatch

from common.buffer import ReplayWindow


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
    """Uniform mini-batches of one-step terminal transitions, sampled with one index draw per batch."""

    def __init__(self, data: TrainingArrays, seed: int = 0) -> None:
        if len(data) == 0:
            raise ValueError("no rows to train on")
        self.data = data
        self.rng = np.random.default_rng(seed)
        self._ones: dict[int, np.ndarray] = {}

    def sample(self, batch_size: int) -> TransitionMiniBatch:
        idx = self.rng.integers(0, len(self.data), batch_size)
        obs = self.data.states[idx]
        act = self.data.actions[idx]
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
