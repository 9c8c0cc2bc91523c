"""The serving side: the champion's exported policy plus the exploration that produces logged propensities.

    weights, log_density = ServingPolicy.from_registry("models").act(state_vector)

The search engine ranks with `weights` and logs `log_propensity = log_density` and `policy_version` with the
event, which is what lets the gate evaluate any later candidate exactly. A new champion pointer is noticed on
the next call (a cheap stat of the pointer file) and loaded before it is swapped in: no downtime.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.exploration import DirichletExploration, weights_from_actions
from deploy.registry import ModelRegistry, RegistryError

log = logging.getLogger(__name__)


class ServingPolicy:
    def __init__(self, registry: ModelRegistry, seed: int | None = None) -> None:
        self.registry = registry
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self.version: str | None = None
        self._policy: Any = None
        self.exploration = DirichletExploration()
        self.refresh()

    @classmethod
    def from_registry(cls, root: str | Path, seed: int | None = None) -> ServingPolicy:
        return cls(ModelRegistry(root), seed)

    def refresh(self) -> None:
        """Load the champion if the pointer changed since the last call (`mean` and `act` call it themselves)."""
        path = self.registry.champion_path
        mtime = path.stat().st_mtime if path.exists() else None
        if mtime == self._mtime:
            return
        version = self.registry.champion()
        if version is None:
            raise RegistryError(f"no champion in {self.registry.root}: promote a model first")
        policy = load_policy_mean(self.registry.path(version, "policy.pt"))
        ex = json.loads(self.registry.path(version, "exploration.json").read_text())
        with self._lock:
            self._policy, self.version, self._mtime = policy, version, mtime
            self.exploration = DirichletExploration(kappa=ex["kappa"], min_alpha=ex["min_alpha"])
        log.info("serving champion=%s", version)

    def mean(self, states: np.ndarray) -> np.ndarray:
        """Mean weights for state vectors [n, 23] (or one [23])."""
        self.refresh()
        return self._policy(np.atleast_2d(states))

    def act(self, state: np.ndarray) -> tuple[np.ndarray, float]:
        """Served weights for one state vector and the natural log of their density (log it as log_propensity)."""
        m = self.mean(state)
        with self._lock:
            a, logp = self.exploration.sample(m, self.rng)
        return a[0], float(logp[0])


@contextlib.contextmanager
def torchscript_quiet() -> Iterator[None]:
    """Recent torch warns on every `torch.jit` call that TorchScript is deprecated in favour of `torch.export`;
    TorchScript is still the registry's format (a shrunk step scripts two networks into one), so the warning
    is kept out of the operators' logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..*deprecated", category=FutureWarning)
        yield


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A TorchScript file, on the CPU."""
    with torchscript_quiet():
        return torch.jit.load(str(path), map_location="cpu")


def load_policy_mean(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """A registry's exported policy (TorchScript `policy.pt`) as mean weights: states [n, 23] -> weights [n, 7]."""
    module = load_torchscript(path)
    module.eval()

    def mean(states: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.atleast_2d(np.asarray(states, dtype=np.float32)))
        if len(x) == 0:
            return np.empty((0, 7))
        with torch.no_grad():
            out = np.concatenate([module(x[i : i + 65_536]).numpy() for i in range(0, len(x), 65_536)])
        return weights_from_actions(out)

    return mean
