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


DEFAULT_VERSION = "default"  # what decisions carry as policy_version while the registry has no champion


class ServingPolicy:
    """The champion's mean weights with its exploration; `default_weights` (the search engine's fixed weights)
    with `exploration` while there is no champion, so the first traffic of a deployment is already learnable.

    `auto_refresh` (the library default) stats the champion pointer on every call; `rankrl serve` turns it off
    and calls `refresh` from its own reload thread instead."""

    def __init__(
        self,
        registry: ModelRegistry,
        seed: int | None = None,
        default_weights: np.ndarray | None = None,
        exploration: DirichletExploration | None = None,
        auto_refresh: bool = True,
    ) -> None:
        self.registry = registry
        self.rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self.version: str | None = None
        self._policy: Any = None
        self.default_weights = None if default_weights is None else weights_from_actions(default_weights)
        self.default_exploration = exploration or DirichletExploration()
        self.exploration = self.default_exploration
        self.auto_refresh = auto_refresh
        if self.default_weights is not None:
            self._serve_default()
        self.refresh()

    @classmethod
    def from_registry(cls, root: str | Path, seed: int | None = None) -> ServingPolicy:
        return cls(ModelRegistry(root), seed)

    def _serve_default(self) -> None:
        fixed = np.asarray(self.default_weights)

        def mean(states: np.ndarray) -> np.ndarray:
            return np.broadcast_to(fixed, (len(states), len(fixed))).copy()

        with self._lock:
            self._policy, self.version, self.exploration = mean, DEFAULT_VERSION, self.default_exploration

    def refresh(self) -> bool:
        """Load the champion if the pointer changed since the last call; True when what is served changed. The
        new policy is loaded before it is swapped in, so no call ever sees a half-loaded one."""
        path = self.registry.champion_path
        mtime = path.stat().st_mtime if path.exists() else None
        if mtime == self._mtime and self._policy is not None:
            return False
        version = self.registry.champion()
        if version is None:
            if self.default_weights is None:
                raise RegistryError(f"no champion in {self.registry.root}: promote a model first")
            self._mtime = mtime
            return False
        policy = load_policy_mean(self.registry.path(version, "policy.pt"))
        ex = json.loads(self.registry.path(version, "exploration.json").read_text())
        with self._lock:
            changed = version != self.version
            self._policy, self.version, self._mtime = policy, version, mtime
            self.exploration = DirichletExploration(kappa=ex["kappa"], min_alpha=ex["min_alpha"])
        log.info("serving champion=%s", version)
        return changed

    def mean(self, states: np.ndarray) -> np.ndarray:
        """Mean weights for state vectors [n, 23] (or one [23])."""
        if self.auto_refresh:
            self.refresh()
        return self._policy(np.atleast_2d(states))

    def act(self, state: np.ndarray) -> tuple[np.ndarray, float]:
        """Served weights for one state vector and the natural log of their density (log it as log_propensity)."""
        a, logp, _ = self.act_batch(np.atleast_2d(state))
        return a[0], float(logp[0])

    def act_batch(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
        """Served weights [n, 7], their log-densities [n] and the version that chose them, for states [n, 23]."""
        if self.auto_refresh:
            self.refresh()
        with self._lock:  # one consistent (policy, exploration, version) for the whole batch
            policy, exploration, version = self._policy, self.exploration, self.version
        m = policy(np.atleast_2d(states))
        with self._lock:  # numpy's Generator is not thread-safe
            a, logp = exploration.sample(m, self.rng)
        return a, logp, str(version)


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
