"""The promotion gate against the simulator's truth: coverage, calibration (small), power, and every HOLD rule.

The long sweeps (1,000 replicates per scenario) live in bench/gate_calibration.py.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from scipy import stats

from common.config import GateConfig
from common.exploration import DirichletExploration
from common.gate_report import GateReport
from common.ope import estimate
from rankrl.sim import RankingWorld, WorldConfig, logged_holdout, null_move_policy, targeted_policy
from trainer.gate import EvaluationData, PromotionGate

EX = DirichletExploration()
# Floors scaled down for 5k-row holdouts (the defaults assume >= 10k searches).
SMALL = GateConfig(min_holdout_rows=1000, min_holdout_conversions=50, min_ess=200, min_effective_conversions=10)


@pytest.fixture(scope="module")
def world() -> RankingWorld:
    return RankingWorld()


@pytest.fixture(scope="module")
def null_world() -> RankingWorld:
    return RankingWorld(WorldConfig(duplicate_signal=(5, 6)))


def holdout(world: RankingWorld, n: int, rng: np.random.Generator) -> EvaluationData:
    ctx = world.contexts(n, rng)
    return EvaluationData.from_arrays(logged_holdout(world, ctx, rng))


def clopper_pearson_lower(k: int, n: int, level: float = 0.95) -> float:
    return 0.0 if k == 0 else float(stats.beta.ppf((1 - level) / 2, k, n - k + 1))


@pytest.mark.slow
def test_snips_interval_covers_the_true_value(world: RankingWorld) -> None:
    """95% intervals of several policies cover the closed-form truth ~95% of the time (R=200 tells 95 from 80)."""
    rng = np.random.default_rng(10)
    policies = {"logger": world.logging_policy, "b1": targeted_policy(world, 1.0), "b-1": targeted_policy(world, -1.0)}
    truth = {k: world.true_value(p, EX, n_contexts=200_000, seed=99).conversion for k, p in policies.items()}
    covered = {k: 0 for k in policies}
    reps = 200
    for _ in range(reps):
        d = holdout(world, 4000, rng)
        for k, p in policies.items():
            w = np.exp(EX.log_density(d.actions, p(d.states)) - d.logging_log_density)
            e = estimate(d.converted.astype(float), w, "snips")
            covered[k] += e.ci_low <= truth[k] <= e.ci_high
    for k in policies:
        assert covered[k] / reps >= 0.89, (k, covered[k], truth[k])


def test_identical_candidate_always_holds(world: RankingWorld) -> None:
    gate = PromotionGate(SMALL, EX)
    d = holdout(world, 5000, np.random.default_rng(0))
    for champion in (None, world.logging_policy):
        dec = gate.evaluate(d, world.logging_policy, champion)
        assert not dec.promote
        # actions are stored as float32, so the density ratio is 1 only to ~1e-7
        assert dec.report.difference.delta == pytest.approx(0.0, abs=1e-6)
        assert "same_as_champion" in dec.reasons


@pytest.mark.slow
def test_exact_null_is_calibrated_small(null_world: RankingWorld) -> None:
    """150 exact-null holdouts: the promotion rate's Clopper-Pearson lower bound is not above alpha."""
    gate = PromotionGate(SMALL, EX)
    rng = np.random.default_rng(1)
    pool = null_world.contexts(60_000, rng)
    reps, promoted = 150, 0
    cand = null_move_policy(null_world, 0.1)
    for r in range(reps):
        ctx = pool.take(rng.integers(0, len(pool), 5000))
        d = EvaluationData.from_arrays(logged_holdout(null_world, ctx, rng))
        promoted += gate.evaluate(d, cand, bootstrap="when_needed", cross_checks=False, seed=r).promote
    assert clopper_pearson_lower(promoted, reps) <= 0.05, promoted


@pytest.mark.slow
def test_clearly_better_candidate_is_promoted(world: RankingWorld) -> None:
    gate = PromotionGate(GateConfig(), EX)
    rng = np.random.default_rng(2)
    pool = world.contexts(100_000, rng)
    cand = targeted_policy(world, 1.0)  # ~ +5.6% true conversion, ESS/n ~ 0.36
    promoted = 0
    for r in range(8):
        d = EvaluationData.from_arrays(logged_holdout(world, pool.take(rng.integers(0, len(pool), 50_000)), rng))
        promoted += gate.evaluate(d, cand, bootstrap="when_needed", cross_checks=False, seed=r).promote
    assert promoted >= 6
    worse = targeted_policy(world, -1.0)
    d = EvaluationData.from_arrays(logged_holdout(world, pool.take(rng.integers(0, len(pool), 50_000)), rng))
    assert not gate.evaluate(d, worse, cross_checks=False).promote


def test_report_carries_the_evidence(world: RankingWorld) -> None:
    d = holdout(world, 20_000, np.random.default_rng(3))
    dec = PromotionGate(GateConfig(), EX).evaluate(d, targeted_policy(world, 1.0), bootstrap="always")
    r = dec.report
    assert r.business is not None and r.candidate is not None and r.champion is not None and r.checks and r.rule
    assert r.decision == ("PROMOTE" if dec.promote else "HOLD") and r.label == dec.label
    assert r.weights_source == "logged"
    assert r.difference is not None and r.difference.lcb_boot is not None and r.difference.mde80 > 0
    assert set(r.business) >= {"conversion_rate", "mrr", "precision_at_1", "precision_at_10", "revenue_per_session"}
    assert r.champion.policy == "logging"
    assert r.champion.snips_conversion.value == pytest.approx(d.converted.mean())
    if not dec.promote:
        assert r.cross_checks is not None
    # The manifest form round-trips, and carries the shown step's evidence at the top for people reading it.
    as_dict = r.to_dict()
    assert GateReport.from_dict(orjson.loads(orjson.dumps(as_dict))) == r
    assert as_dict["difference"]["lcb"] == r.difference.lcb


def test_small_holdout_holds(world: RankingWorld) -> None:
    d = holdout(world, 3000, np.random.default_rng(4))
    dec = PromotionGate(GateConfig(), EX).evaluate(d, targeted_policy(world, 1.0))
    assert "small_sample" in dec.reasons


def test_far_candidate_holds_on_weights(world: RankingWorld) -> None:
    d = holdout(world, 20_000, np.random.default_rng(5))
    dec = PromotionGate(GateConfig(), EX).evaluate(d, targeted_policy(world, 6.0))
    assert not dec.promote
    assert any(r.startswith("candidate_") for r in dec.reasons)


def test_mislabelled_densities_fail_the_mean_weight_check(world: RankingWorld) -> None:
    d = holdout(world, 20_000, np.random.default_rng(6))
    d.logging_log_density = np.random.default_rng(0).permutation(d.logging_log_density)
    dec = PromotionGate(GateConfig(), EX).evaluate(d, targeted_policy(world, 0.5))
    assert not dec.promote
    assert "candidate_mean_weight" in dec.reasons or "candidate_max_weight_share" in dec.reasons


@pytest.mark.slow
def test_estimated_propensities_still_cover(world: RankingWorld) -> None:
    """Logs without propensity: a behaviour model fitted on separate rows; intervals still cover the truth."""
    rng = np.random.default_rng(7)
    cand = targeted_policy(world, 1.0)
    truth = world.true_value(cand, EX, n_contexts=200_000, seed=98).conversion
    gate = PromotionGate(SMALL, EX, bootstrap_samples=0)
    covered, reps = 0, 60
    for r in range(reps):
        d = holdout(world, 8000, rng)
        d.logging_log_density = np.full(len(d), np.nan)
        dec = gate.evaluate(d, cand, cross_checks=False, seed=r)
        assert dec.report.weights_source == "estimated"
        est = dec.report.candidate.snips_conversion
        covered += est.ci_low <= truth <= est.ci_high
    assert covered / reps >= 0.85, covered


def test_deterministic_logger_holds_with_no_overlap(world: RankingWorld) -> None:
    rng = np.random.default_rng(8)
    ctx = world.contexts(20_000, rng)
    actions = world.logging_policy(ctx.states)  # served without exploration
    conv, _ = world.expected_outcomes(ctx, actions)
    d = EvaluationData(
        ctx.states, actions, rng.random(len(conv)) < conv, np.zeros(len(conv)), np.full(len(conv), np.nan)
    )
    dec = PromotionGate(GateConfig(), EX).evaluate(d, targeted_policy(world, 1.0))
    assert not dec.promote
    assert dec.reasons[0] == "no_overlap"
    assert "deterministic" in dec.report.checks[0].detail


@pytest.mark.slow
def test_shrinkage_promotes_a_partial_step(world: RankingWorld) -> None:
    """A candidate too far to judge whole can still be promoted at a smaller step, in a fixed sequence."""
    rng = np.random.default_rng(9)
    d = holdout(world, 100_000, rng)
    gate = PromotionGate(GateConfig(), EX, shrinkage_steps=(0.25, 0.5, 1.0), bootstrap_samples=500)
    dec = gate.evaluate(d, targeted_policy(world, 4.0), logging_mean=world.logging_policy, cross_checks=False)
    steps = [s.step for s in dec.report.steps]
    assert steps[0] == 0.25  # smallest first
    assert dec.promote and dec.step in (0.25, 0.5), (steps, dec.reasons)
    assert steps[-1] > dec.step  # stopped at the first failing step

    # The plot draws what decided: each step's lower bound against the margin, and the weights' distribution.
    from trainer.evaluate import draw_report

    r = dec.report
    fig = draw_report(r)
    gid = lambda name: fig.findobj(lambda a: a.get_gid() == name)  # noqa: E731
    (margin,) = gid("margin")
    assert margin.get_xdata()[0] == pytest.approx(100 * GateConfig().min_lift)
    lcbs = [float(m.get_xdata()[0]) for m in gid("lcb")]
    assert lcbs == pytest.approx([100 * s.difference.lcb for s in r.steps])
    assert sum(lcb > 100 * r.margin for lcb in lcbs) == len([s for s in r.steps if s.step <= dec.step])
    (weights,) = gid("weights")
    assert r.candidate_weights is not None and r.candidate_weights.log10_histogram is not None
    assert weights.get_data().values.sum() == r.evaluated_rows == sum(r.candidate_weights.log10_histogram)


@pytest.mark.slow  # a process-level run (seconds): the full tier
def test_bootstrapping_only_when_needed_decides_as_always(world: RankingWorld) -> None:
    """The bound is min(t, bootstrap): where t fails the bootstrap cannot promote, so skipping it changes nothing."""
    gate = PromotionGate(GateConfig(), EX, shrinkage_steps=(0.25, 0.5, 1.0))
    for i, cand in enumerate([targeted_policy(world, 1.0), targeted_policy(world, -1.0), world.logging_policy]):
        d = holdout(world, 20_000, np.random.default_rng(40 + i))
        needed = gate.evaluate(d, cand, logging_mean=world.logging_policy, bootstrap="when_needed", seed=i)
        always = gate.evaluate(d, cand, logging_mean=world.logging_policy, bootstrap="always", seed=i)
        assert needed.label == always.label and needed.step == always.step
        if not needed.promote and needed.report.difference is not None and needed.report.difference.lcb_t <= 0:
            assert needed.report.difference.lcb_boot is None  # skipped: the t bound already held it
