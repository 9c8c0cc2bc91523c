"""Policies of the simulated world for the demo, tests and benchmarks: a good personalised one, exact nulls, tilts.

Each is a function of state vectors [n, 23] -> mean weights [n, 7] (`Policy`); the world's own logging policy
is `RankingWorld.logging_policy`.
"""

from __future__ import annotations

import numpy as np

from rankrl.sim.world import Policy, RankingWorld


def personalised_policy(states: np.ndarray) -> np.ndarray:
    """A hand-made state-dependent policy that converts clearly better than the logger."""
    s = np.asarray(states, dtype=np.float64)
    lux, hes, top_brand = s[:, 0], s[:, 1], s[:, 4]
    w = np.empty((len(s), 7))
    w[:, 0] = 0.15
    w[:, 1] = 0.05
    w[:, 2] = 0.02 + 1.6 * np.abs(lux - 0.5)
    w[:, 3] = 0.05 + 0.6 * top_brand
    w[:, 4] = 0.05
    w[:, 5] = 0.15
    w[:, 6] = 0.01 + 0.08 * hes
    return w / w.sum(axis=1, keepdims=True)


def null_move_policy(world: RankingWorld, fraction: float) -> Policy:
    """The logger with `fraction` of the duplicated signal's weight moved to its copy: an exact null.

    Needs `duplicate_signal`: the served weights change (the importance weights are not 1) but the ranking,
    hence every outcome, does not.
    """
    if world.config.duplicate_signal is None:
        raise ValueError("null_move_policy needs a world with duplicate_signal set")
    src, dst = world.config.duplicate_signal

    def policy(states: np.ndarray) -> np.ndarray:
        m = world.logging_policy(states).copy()
        moved = fraction * m[:, src]
        m[:, src] -= moved
        m[:, dst] += moved
        return m

    return policy


def targeted_policy(world: RankingWorld, beta: float) -> Policy:
    """The logger tilted by `beta` towards what each user wants (price-level fit, brand, deals).

    The cheapest way to buy lift with little movement from the logger: beta > 0 converts better,
    beta < 0 worse, beta = 0 is the logger itworld.
    """

    def policy(states: np.ndarray) -> np.ndarray:
        s = np.asarray(states, dtype=np.float64)
        g = np.zeros((len(s), 7))
        g[:, 2] = 2.0 * np.abs(s[:, 0] - 0.5)
        g[:, 3] = s[:, 4]
        if world.config.duplicate_signal is None:
            g[:, 6] = s[:, 1] / 4.0
        z = np.log(world.logging_policy(s)) + beta * g
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    return policy
