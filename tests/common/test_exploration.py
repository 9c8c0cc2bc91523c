"""The exploration family: α(mean), sampling, the exact log-density (against scipy), and the served means."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from common.config import ExplorationConfig
from common.exploration import DirichletExploration, dirichlet_log_density, weights_from_actions


def test_dirichlet_density_matches_scipy_and_integrates() -> None:
    ex = DirichletExploration(kappa=20.0)
    mean = np.array([[0.3, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1]])
    alpha = ex.alphas(mean)
    assert alpha.sum() == pytest.approx(20.0) and alpha.min() >= 1.0
    a, logp = ex.sample(np.repeat(mean, 5, axis=0), np.random.default_rng(0))
    for i in range(5):
        assert logp[i] == pytest.approx(stats.dirichlet.logpdf(a[i], alpha[0]))
    np.testing.assert_allclose(dirichlet_log_density(a, np.repeat(alpha, 5, axis=0)), logp)
    # E_b[π̃/p_b] = 1: the exact density ratio has mean one under the logger
    mean2 = np.array([[0.25, 0.1, 0.15, 0.2, 0.1, 0.1, 0.1]])
    a, logp = ex.sample(np.repeat(mean, 200_000, axis=0), np.random.default_rng(1))
    w = np.exp(ex.log_density(a, np.repeat(mean2, len(a), axis=0)) - logp)
    assert w.mean() == pytest.approx(1.0, abs=0.02)


def test_alphas_follow_the_documented_family_and_floor() -> None:
    """α(mean) = min_alpha + (κ − 7·min_alpha)·mean: every α >= min_alpha and Σα = κ."""
    ex = DirichletExploration(kappa=30.0, min_alpha=2.0)
    mean = np.array([[1.0, 0, 0, 0, 0, 0, 0], [1 / 7] * 7])
    alpha = ex.alphas(mean)
    np.testing.assert_allclose(alpha[0], [2.0 + 16.0, 2, 2, 2, 2, 2, 2])
    np.testing.assert_allclose(alpha.sum(axis=1), 30.0)
    np.testing.assert_allclose(ex.alphas(np.zeros((1, 7))), ex.alphas(np.full((1, 7), 1 / 7)))  # all-zero: uniform


def test_samples_are_on_the_simplex_and_centred_on_the_mean() -> None:
    ex = DirichletExploration()
    mean = np.array([0.4, 0.05, 0.05, 0.2, 0.1, 0.1, 0.1])
    a, logp = ex.sample(np.repeat(mean[None], 100_000, axis=0), np.random.default_rng(3))
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    assert (a >= 0).all() and np.isfinite(logp).all()
    np.testing.assert_allclose(a.mean(axis=0), ex.alphas(mean) / ex.kappa, atol=2e-3)


def test_defaults_come_from_the_config() -> None:
    assert DirichletExploration() == DirichletExploration.from_config(ExplorationConfig())
    with pytest.raises(ValueError):
        DirichletExploration(kappa=0.0)


def test_served_means_from_raw_policy_outputs() -> None:
    w = weights_from_actions(np.array([[2.0, -1.0, 0, 0, 0, 0, 2.0], [0.0] * 7]))
    np.testing.assert_allclose(w[0], [0.5, 0, 0, 0, 0, 0, 0.5])
    np.testing.assert_allclose(w[1], 1 / 7)
    assert dirichlet_log_density(np.full((1, 7), 1 / 7), np.ones((1, 7)))[0] == pytest.approx(np.log(720.0))
