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
import time
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
        # why what is served is not the champion the pointer names (a damaged version), or None
        self.problem: str | None = None
        self._failed: tuple[float | None, float] | None = None  # (pointer mtime, when) of the last failed load
        if self.default_weights is not None:
            self._serve_default()
            try:
                self.refresh()
            except Exception as e:  # a damaged champion must not keep a new instance from serving
                self._fall_back(e)
        else:
            self.refresh()

    def _fall_back(self, e: Exception) -> None:
        """Serve the newest earlier champion that verifies and loads, else the default weights, and say why."""
        bad = self._pointer_version()
        tried: list[str] = []
        for h in reversed(self.registry.history()):
            for v in (h.get("version"), h.get("previous")) if h.get("action") in ("promote", "rollback") else ():
                if not isinstance(v, str) or v == bad or v in tried:
                    continue
                tried.append(v)
                try:
                    self._load(v)
                except Exception as e2:
                    log.warning("serving: earlier champion %s cannot be loaded either: %s", v, e2)
                    continue
                self.problem = f"champion {bad} cannot be loaded ({e}); serving the earlier champion {v}"
                log.error("serving: %s", self.problem)
                return
        self._serve_default()
        self.problem = f"champion {bad} cannot be loaded ({e}); serving the default weights"
        log.error("serving: %s", self.problem)

    def _pointer_version(self) -> str | None:
        try:
            return self.registry.champion()
        except RegistryError:
            return None

    def _load(self, version: str) -> None:
        policy = load_policy_mean(self.registry.path(version, "policy.pt"))
        ex = json.loads(self.registry.path(version, "exploration.json").read_text())
        with self._lock:
            self._policy, self.version = policy, version
            self.exploration = DirichletExploration(kappa=ex["kappa"], min_alpha=ex["min_alpha"])

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
        if self._failed is not None and self._failed[0] == mtime and time.monotonic() - self._failed[1] < 30.0:
            return False  # the same damaged pointer or version: try again every 30 s, not on every call
        try:
            version = self.registry.champion()
            if version is None:
                if self.default_weights is None:
                    raise RegistryError(f"no champion in {self.registry.root}: promote a model first")
                self._mtime, self.problem = mtime, None
                return False
            before = self.version
            self._load(version)
        except Exception as e:
            self._failed = (mtime, time.monotonic())
            if self._policy is not None:
                self.problem = f"the champion cannot be loaded ({e}); still serving {self.version}"
            raise
        self._mtime, self._failed, self.problem = mtime, None, None
        log.info("serving champion=%s", version)
        return version != before

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
        _, a, logp, version = self.decide(states)
        return a, logp, version

    def decide(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """The mean weights [n, 7], the served weights [n, 7], their log-densities [n] and the version."""
        if self.auto_refresh:
            self.refresh()
        with self._lock:  # one consistent (policy, exploration, version) for the whole batch
            policy, exploration, version = self._policy, self.exploration, self.version
        m = policy(np.atleast_2d(states))
        with self._lock:  # numpy's Generator is not thread-safe
            a, logp = exploration.sample(m, self.rng)
        return m, a, logp, str(version)


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
