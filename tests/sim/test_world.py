"""The simulator's closed-form truth against Monte Carlo from its own events; personalisation; exact nulls."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from common.exploration import DirichletExploration
from common.reward import compute_reward
from common.schema import parse_event
from rankrl.sim import RankingWorld, WorldConfig, personalised_policy, simulate


@pytest.fixture(scope="module")
def world() -> RankingWorld:
    return RankingWorld()


@pytest.mark.slow
def test_closed_form_matches_realised_events(world: RankingWorld) -> None:
    """Realised conversion and reward of 30k logged searches agree with the exact expectations (z < 4)."""
    conv_true, rew_true, conv_obs, rew_obs = [], [], [], []
    for ctx, actions, logp, events in simulate(world, 30_000, seed=3, batch=10_000):
        c, r = world.expected_outcomes(ctx, actions)
        conv_true.append(c)
        rew_true.append(r)
        parsed = [parse_event(orjson.dumps(e)) for e in events]  # every event is valid
        conv_obs.append([e.converted for e in parsed])
        rew_obs.append([compute_reward(e) for e in parsed])
        np.testing.assert_allclose([e.logging_log_density for e in parsed], logp)
    ct, rt = np.concatenate(conv_true), np.concatenate(rew_true)
    co, ro = np.concatenate(conv_obs).astype(float), np.concatenate(rew_obs)
    n = len(ct)
    se_c = np.sqrt((ct * (1 - ct)).sum()) / n  # Bernoulli noise given the contexts and actions
    assert abs(co.mean() - ct.mean()) < 4 * se_c, (co.mean(), ct.mean(), se_c)
    se_r = (ro - rt).std() / np.sqrt(n)
    assert abs(ro.mean() - rt.mean()) < 4 * se_r, (ro.mean(), rt.mean(), se_r)
    assert 0.03 < ct.mean() < 0.15  # a plausible e-commerce conversion rate


def test_true_value_reports_its_error(world: RankingWorld) -> None:
    ex = DirichletExploration()
    a = world.true_value(world.logging_policy, ex, n_contexts=20_000, seed=1)
    b = world.true_value(world.logging_policy, ex, n_contexts=20_000, seed=2)
    assert a.conversion_se > 0
    assert abs(a.conversion - b.conversion) < 4 * np.hypot(a.conversion_se, b.conversion_se)


@pytest.mark.slow
def test_best_weights_depend_on_the_user(world: RankingWorld) -> None:
    """The personalised policy beats every fixed weight vector tried, under common random numbers."""
    pers = world.true_value(personalised_policy, None, n_contexts=20_000, seed=11).conversion
    rng = np.random.default_rng(0)
    candidates = [rng.dirichlet(np.ones(7)) for _ in range(25)] + [np.full(7, 1 / 7)]
    best_fixed = max(
        world.true_value(lambda s, a=a: np.tile(a, (len(s), 1)), None, n_contexts=20_000, seed=11).conversion
        for a in candidates
    )
    assert pers > best_fixed
    logging = world.true_value(world.logging_policy, None, n_contexts=20_000, seed=11).conversion
    assert pers > 1.05 * logging


def test_duplicated_signal_is_an_exact_null() -> None:
    w = RankingWorld(WorldConfig(duplicate_signal=(5, 6)))
    ctx = w.contexts(2_000, np.random.default_rng(0))
    a = w.logging_policy(ctx.states)
    b = a.copy()
    moved = 0.5 * b[:, 5]
    b[:, 5] -= moved
    b[:, 6] += moved
    np.testing.assert_array_equal(w.rank(ctx, a), w.rank(ctx, b))
    ca, ra = w.expected_outcomes(ctx, a)
    cb, rb = w.expected_outcomes(ctx, b)
    np.testing.assert_allclose(ca, cb)
    np.testing.assert_allclose(ra, rb)


def test_deterministic_policy_logs_no_propensity(world: RankingWorld) -> None:
    _, _, logp, events = next(simulate(world, 50, seed=1, policy=personalised_policy, exploration=None))
    assert np.isnan(logp).all()
    assert all("log_propensity" not in e for e in events)


def test_a_changed_feature_pipeline_turns_signals_around_and_moves_the_best_weights() -> None:
    """bench/loop.py --drift: the same users and candidates, the trait-fit and brand scores turned around; a policy
    that leans on them converts worse in the changed world, while the logger's signals-agnostic parts are kept."""
    import numpy as np

    from common.exploration import DirichletExploration
    from rankrl.sim import RankingWorld, WorldConfig
    from rankrl.sim.policies import targeted_policy

    old, new = RankingWorld(WorldConfig()), RankingWorld(WorldConfig(inverted_signals=(2, 3)))
    a, b = old.contexts(500, np.random.default_rng(1)), new.contexts(500, np.random.default_rng(1))
    assert np.allclose(b.signals[..., (2, 3)], 1.0 - a.signals[..., (2, 3)])
    assert np.array_equal(a.states, b.states) and np.allclose(
        a.signals[..., (0, 1, 4, 5, 6)], b.signals[..., (0, 1, 4, 5, 6)]
    )
    ex = DirichletExploration()
    lean = targeted_policy(old, 2.0)
    assert new.true_value(lean, ex, 10_000, seed=3).conversion < old.true_value(lean, ex, 10_000, seed=3).conversion
