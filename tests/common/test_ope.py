"""Estimators on hand-made arrays, the Pareto k̂ fit, the behaviour model (exploration: test_exploration.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from common.exploration import dirichlet_log_density
from common.ope import (
    DirichletBehaviourModel,
    estimate,
    paired_difference,
    pareto_k_hat,
    weight_diagnostics,
)


def test_ips_and_snips_by_hand() -> None:
    r = np.array([1.0, 0.0, 1.0, 0.0])
    w = np.array([2.0, 1.0, 0.5, 0.5])
    assert estimate(r, w, "ips").value == pytest.approx((2.0 + 0.5) / 4)
    assert estimate(r, w, "snips").value == pytest.approx((2.0 + 0.5) / 4.0)
    w2 = np.array([2.0, 2.0, 0.5, 0.5])
    assert estimate(r, w2, "snips").value == pytest.approx(2.5 / 5.0)


def test_identical_policies_have_zero_difference() -> None:
    rng = np.random.default_rng(0)
    r = (rng.random(1000) < 0.1).astype(float)
    w = rng.lognormal(0, 0.5, 1000)
    d = paired_difference(r, w, w, bootstrap=200, rng=rng)
    assert d.delta == 0.0 and d.se == 0.0 and d.lcb == 0.0


def test_t_and_bootstrap_agree_on_a_regular_problem() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    r = (rng.random(n) < 0.1).astype(float)
    w1 = rng.lognormal(-0.02, 0.2, n)
    d = paired_difference(r, w1, np.ones(n), bootstrap=2000, rng=rng)
    assert d.lcb_boot is not None
    assert abs(d.lcb_t - d.lcb_boot) < 0.25 * d.se * 4
    assert d.lcb == min(d.lcb_t, d.lcb_boot)
    e = estimate(r, w1, "snips", bootstrap=2000, rng=rng)
    assert e.boot_low is not None and e.boot_high is not None
    assert e.boot_low == pytest.approx(e.ci_low, abs=0.3 * (e.ci_high - e.ci_low))


def test_a_bootstrap_for_a_decision_stops_early_where_it_is_clear_and_decides_as_the_full_one() -> None:
    """The sequential bootstrap (a margin given) runs 200 replicates where the bound is far from the margin, all of
    them near it, and lands on the same side of the margin as the 2,000-replicate bootstrap."""
    rng = np.random.default_rng(4)
    n = 20_000
    r = (rng.random(n) < 0.1).astype(float)
    w1 = rng.lognormal(-0.02, 0.2, n) * (1 + 0.3 * r)  # a real lift
    full = paired_difference(r, w1, np.ones(n), bootstrap=2000, rng=np.random.default_rng(5))
    assert full.lcb_boot is not None and full.bootstrap_replicates == 2000
    for margin, settles_early in ((full.lcb_boot - 10 * full.se, True), (full.lcb_boot + 10 * full.se, True),
                                  (full.lcb_boot, False)):  # fmt: skip
        seq = paired_difference(r, w1, np.ones(n), bootstrap=2000, rng=np.random.default_rng(6), margin=margin)
        assert seq.lcb_boot is not None
        if settles_early:
            assert seq.bootstrap_replicates == 200
            assert (seq.lcb_boot > margin) == (full.lcb_boot > margin)
        else:
            assert seq.bootstrap_replicates > 1000


@pytest.mark.parametrize("k", [0.2, 0.5, 0.9])
def test_pareto_k_recovers_a_known_tail(k: float) -> None:
    x = stats.genpareto.rvs(c=k, size=20_000, random_state=np.random.default_rng(3))
    assert pareto_k_hat(x) == pytest.approx(k, abs=0.12)


def test_weight_diagnostics() -> None:
    w = np.ones(100)
    d = weight_diagnostics(w, np.zeros(100))
    assert d.ess == pytest.approx(100) and d.ess_fraction == pytest.approx(1.0)
    assert d.max_weight_share == pytest.approx(0.01) and d.mean_weight == 1.0
    w[0] = 1000.0
    d = weight_diagnostics(w, np.ones(100))
    assert d.max_weight_share > 0.9 and d.ess < 2


def test_behaviour_model_recovers_a_dirichlet_logger() -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    states = rng.normal(size=(n, 5))
    logits = states @ rng.normal(0, 0.3, (5, 7))
    mean = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    alpha = 1.0 + 15.0 * mean
    actions = rng.standard_gamma(alpha)
    actions /= actions.sum(axis=1, keepdims=True)
    m = DirichletBehaviourModel().fit(states[:10_000], actions[:10_000])
    est = m.log_density(states[10_000:], actions[10_000:])
    true = dirichlet_log_density(actions[10_000:], alpha[10_000:])
    assert np.abs(est - true).mean() < 0.1  # 10k-row fit: estimation noise ~0.05 nats
    assert m.precision == pytest.approx(22.0, rel=0.05)
    assert not m.deterministic
    assert DirichletBehaviourModel().fit(states[:5000], mean[:5000]).deterministic
