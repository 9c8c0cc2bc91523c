"""The exploration policy: what is actually served around a policy's mean weights, and its exact density.

Serving samples the seven weights from Dirichlet(alpha(mean)) and logs the log-density of what it served;
the simulator's logging policy does the same, and the gate scores logged actions under a candidate's mean with
the same family. The importance weight of a logged action is then an exact density ratio
pi_candidate(a|x) / pi_logging(a|x), with no kernel bandwidth to tune (a narrow kernel in 6 free dimensions
keeps ~0.2% of the effective sample).

    alpha(mean) = min_alpha + (kappa - 7 * min_alpha) * mean        (sums to kappa; every alpha >= min_alpha)

The floor keeps every alpha >= 1 by default, so the density is bounded and no logged action sits on a pole;
kappa sets the spread: a larger kappa serves closer to the mean. The default 20 (per-weight standard deviation
about 0.09 around a mean of 0.2) is wider than the usual 30-100 because the gate can only judge candidates the
logger overlaps: in the simulator a +10% candidate keeps ESS/n ~3% at kappa 20 but ~0.6% at kappa 30, while the
exploration itself does not lower the logger's conversion (6.64% served vs 6.47% at its mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from common.config import ExplorationConfig

ACTION_FLOOR = 1e-12  # log(0) guard for actions stored in float32


@dataclass(frozen=True)
class DirichletExploration:
    """Dirichlet exploration around a mean action on the 7-simplex."""

    kappa: float = ExplorationConfig.kappa  # defaults are defined once, in the config
    min_alpha: float = ExplorationConfig.min_alpha

    def __post_init__(self) -> None:
        if self.kappa <= 0 or self.min_alpha <= 0:
            raise ValueError("kappa and min_alpha must be > 0")

    @classmethod
    def from_config(cls, cfg: ExplorationConfig) -> DirichletExploration:
        return cls(cfg.kappa, cfg.min_alpha)

    def alphas(self, mean: np.ndarray) -> np.ndarray:
        """Concentration parameters for mean actions [n, d] (or [d]); means are clipped at 0 and renormalised."""
        m = np.clip(np.asarray(mean, dtype=np.float64), 0.0, None)
        s = m.sum(axis=-1, keepdims=True)
        d = m.shape[-1]
        m = np.where(s > 0, m / np.where(s > 0, s, 1.0), 1.0 / d)
        return self.min_alpha + (self.kappa - d * self.min_alpha) * m

    def sample(self, mean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Served actions for mean actions [n, d] and their log-densities [n]."""
        alpha = self.alphas(mean)
        # Gamma draws normalised per row: the vectorised Dirichlet (rng.dirichlet takes one alpha vector).
        g = rng.standard_gamma(alpha)
        actions = g / g.sum(axis=-1, keepdims=True)
        return actions, dirichlet_log_density(actions, alpha)

    def log_density(self, actions: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """Log-density of served actions [n, d] under exploration around mean actions [n, d]."""
        return dirichlet_log_density(actions, self.alphas(mean))


def dirichlet_log_density(actions: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """log Dir(a | alpha) = lgamma(sum alpha) - sum lgamma(alpha_i) + sum (alpha_i - 1) log a_i."""
    a = np.asarray(actions, dtype=np.float64)
    a = np.clip(a, ACTION_FLOOR, None)
    a = a / a.sum(axis=-1, keepdims=True)
    return gammaln(alpha.sum(axis=-1)) - gammaln(alpha).sum(axis=-1) + ((alpha - 1.0) * np.log(a)).sum(axis=-1)


def weights_from_actions(actions: np.ndarray) -> np.ndarray:
    """Mean weights from a policy's raw 7-dim output: clipped at 0 and normalised to sum to 1 (uniform if all 0)."""
    a = np.clip(np.asarray(actions, dtype=np.float64), 0.0, None)
    s = a.sum(axis=-1, keepdims=True)
    return np.where(s > 0, a / np.where(s > 0, s, 1.0), 1.0 / a.shape[-1])
