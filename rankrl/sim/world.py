"""The simulated world with known truth: contexts, a ranking from the seven weights, a position-based user model.

    context x ──► state vector s(x) (23 dims, what a policy sees)
      │           M candidates, each with 7 signal scores φ_j and a hidden utility u_j(user)
      ▼
    action a (7 weights) ──► score_j = aᵀφ_j ──► top-K ranking
      ▼
    user, position k (1-based): examines with θ_k = k^-η; if examined, one level
    {none, click, wishlist, cart, purchase} from softmax(u_j − offsets); outcome = deepest level

Because positions are independent given the ranking, the expected conversion and the expected reward of any
(context, action) are closed-form (`expected_outcomes`); the value of a policy then needs Monte Carlo only over
contexts and served actions (`true_value`, which reports its standard error). No Bernoulli noise enters.

The best weights depend on the user: luxury-polarised users want W_TRAIT (price-level fit), users with strong
brand affinities want W_BRAND, hesitant users want W_MARKET_DEAL. So a learned state-dependent policy can beat
any fixed weights (`tests/sim/test_world.py` checks this).

For calibration tests the world can duplicate a signal (`duplicate_signal=(5, 6)`: φ₆ ≡ φ₅): moving weight
between the two copies changes the served action but not the ranking, an exact null.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from common.exploration import DirichletExploration
from common.features import STATE_DIM
from common.reward import REVENUE_CAP, REVENUE_SCALE, RewardConfig

Policy = Callable[[np.ndarray], np.ndarray]  # state vectors [n, 23] -> mean weights [n, 7]

BRANDS = (
    "aurel",
    "bexley",
    "corvo",
    "delmar",
    "elara",
    "fenwick",
    "gilt",
    "hollis",
    "iver",
    "juno",
    "kestrel",
    "lune",
)
CATEGORIES = ("shoes", "bags", "dresses", "jackets", "watches", "jewelry")
LEVELS = ("none", "click", "wishlist", "cart", "purchase")
LEVEL_OFFSETS = np.array([0.0, 1.0, 2.6, 3.2, 3.6])  # P(level | examined) = softmax(0, u - offset[1:])


def gather(per_candidate: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """Rows [n, M, L] of the shown candidates [n, K] -> [n, K, L]."""
    idx = np.broadcast_to(shown[..., None], (*shown.shape, per_candidate.shape[-1]))
    return np.take_along_axis(per_candidate, idx, axis=1)


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the simulated world (all have defaults that give a ~5% conversion rate)."""

    n_candidates: int = 20
    n_shown: int = 10
    examination_decay: float = 1.0  # θ_k = k^-η
    duplicate_signal: tuple[int, int] | None = None  # (src, dst): φ_dst := φ_src, an exact-null construction
    # A feature pipeline that changes meaning: these signals turn around (φ -> 1 - φ), e.g. (2, 3) for the trait-fit
    # and brand scores. The users do not change; what the engine's signals say about them does (bench/loop.py --drift).
    inverted_signals: tuple[int, ...] = ()
    # The logging policy's mean weights: softmax(logging_logits + z(s) W), W ~ N(0, logging_personalisation²).
    # The default favours popularity signals and is a decent ranker (a worse logger does not leave more evaluable
    # headroom at kappa 20: exploration, not the mean, dominates what is served).
    logging_logits: tuple[float, ...] = (1.0, 0.2, 0.3, 0.3, 0.2, 0.8, 0.2)
    logging_personalisation: float = 0.15
    reward: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class Contexts:
    """A batch of n searches: everything the world knows about each (hidden parts included)."""

    states: np.ndarray  # [n, 23] float32, what the policy sees
    signals: np.ndarray  # [n, M, 7]
    level_probs: np.ndarray  # [n, M, 5] P(level | examined)
    prices: np.ndarray  # [n, M]
    categories: np.ndarray  # [n, M] int
    brands: np.ndarray  # [n, M] int
    discounted: np.ndarray  # [n, M] bool
    desirability: np.ndarray  # [n, M]
    brand_affinity: np.ndarray  # [n, n_brands], 0 for brands the user has no affinity to
    category_spend: np.ndarray  # [n, n_categories], 0 for categories the user never bought
    session: np.ndarray  # [n, 4]: query_length, has_brand, has_price_terms, previous_searches
    user: np.ndarray  # [n, 4]: luxury, hesitation, purchases, category_diversity

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def take(self, idx: np.ndarray) -> Contexts:
        return Contexts(
            states=self.states[idx],
            signals=self.signals[idx],
            level_probs=self.level_probs[idx],
            prices=self.prices[idx],
            categories=self.categories[idx],
            brands=self.brands[idx],
            discounted=self.discounted[idx],
            desirability=self.desirability[idx],
            brand_affinity=self.brand_affinity[idx],
            category_spend=self.category_spend[idx],
            session=self.session[idx],
            user=self.user[idx],
        )


@dataclass(frozen=True)
class Value:
    """A Monte Carlo estimate of a policy's true value with its standard error."""

    conversion: float
    conversion_se: float
    reward: float
    reward_se: float
    n: int


class RankingWorld:
    """The simulated world. `world_seed` fixes its hidden parameters; each call takes its own rng."""

    def __init__(self, config: WorldConfig | None = None, world_seed: int = 7) -> None:
        self.config = config or WorldConfig()
        rs = np.random.default_rng(world_seed)
        # The logging policy: softmax(base + W z(s)), mildly personalised, favouring popularity signals.
        self.logging_base = np.array(self.config.logging_logits, dtype=np.float64)
        if self.logging_base.shape != (7,):
            raise ValueError(f"logging_logits needs 7 values, got {len(self.config.logging_logits)}")
        self.logging_w = rs.normal(0.0, self.config.logging_personalisation, size=(STATE_DIM, 7))
        # State standardisation constants, from a large sample of this world's contexts.
        sample = self.contexts(20_000, np.random.default_rng(world_seed + 1)).states.astype(np.float64)
        self.state_mean = sample.mean(axis=0)
        self.state_std = sample.std(axis=0) + 1e-6
        k = np.arange(1, self.config.n_shown + 1, dtype=np.float64)
        self.examination = k ** (-self.config.examination_decay)
        pw = self.config.reward.position_weights
        self.position_weights = np.array([pw[min(i, len(pw) - 1)] for i in range(self.config.n_shown)])

    # ---------------------------------------------------------------- contexts
    def contexts(self, n: int, rng: np.random.Generator) -> Contexts:
        """Draw n searches: users, sessions, candidates, signal scores and the users' level probabilities."""
        m = self.config.n_candidates
        nb, nc = len(BRANDS), len(CATEGORIES)
        lux = rng.beta(0.7, 0.7, n)  # polarised: many users clearly want luxury or clearly budget
        hes = np.minimum(rng.poisson(1.5, n), 8).astype(np.float64)
        purchases = rng.poisson(3.0, n).astype(np.float64)
        diversity = rng.beta(2.0, 3.0, n)
        # k distinct liked brands / bought categories per user: the first k of a random permutation per row.
        n_liked = rng.choice(4, size=n, p=[0.35, 0.3, 0.2, 0.15])
        brand_rank = np.argsort(rng.random((n, nb)), axis=1).argsort(axis=1)
        aff = np.where(brand_rank < n_liked[:, None], rng.uniform(0.5, 1.0, (n, nb)), 0.0)
        n_cats = 1 + rng.binomial(4, diversity)
        cat_rank = np.argsort(rng.random((n, nc)), axis=1).argsort(axis=1)
        base_spend = 60.0 + 500.0 * lux
        spend = np.where(cat_rank < n_cats[:, None], base_spend[:, None] * rng.lognormal(0.0, 0.3, (n, nc)), 0.0)
        session = np.stack(
            [1 + rng.poisson(2.0, n), rng.random(n) < 0.3, rng.random(n) < 0.15, rng.poisson(1.5, n)], axis=1
        ).astype(np.float64)

        price = rng.lognormal(np.log(150.0), 0.9, (n, m))
        level = 1.0 / (1.0 + np.exp(-(np.log(price) - np.log(150.0)) / 0.9))  # 0 budget .. 1 luxury
        cat = rng.integers(0, nc, (n, m))
        brand = rng.integers(0, nb, (n, m))
        des = rng.beta(2.0, 2.0, (n, m))
        disc = rng.random((n, m)) < 0.3
        xi = rng.normal(0.0, 0.4, (n, m))  # hidden quality: only partly visible through the signals
        brand_aff = np.take_along_axis(aff, brand, axis=1)
        lux_gap = np.abs(lux[:, None] - level)
        # Price-level fit matters to polarised users only (a neutral shopper does not mind); deals to hesitant ones.
        polar = 2.0 * np.abs(lux - 0.5)[:, None]
        util = 1.2 * des + 4.0 * brand_aff - 10.0 * polar * lux_gap + 0.8 * hes[:, None] * disc + xi

        phi = np.empty((n, m, 7))
        phi[..., 0] = des + rng.normal(0, 0.25, (n, m))  # collaborative positive
        phi[..., 1] = 0.5 + 0.25 * xi + rng.normal(0, 0.3, (n, m))  # collaborative negative (inverted)
        phi[..., 2] = 1.0 - lux_gap + rng.normal(0, 0.1, (n, m))  # trait fit
        phi[..., 3] = brand_aff + rng.normal(0, 0.1, (n, m))  # brand
        phi[..., 4] = 0.3 * xi + 0.5 * brand_aff + rng.normal(0, 0.3, (n, m))  # wishlist history
        phi[..., 5] = 0.6 * des + 0.2 * xi + rng.normal(0, 0.2, (n, m))  # market conversion
        phi[..., 6] = disc * rng.uniform(0.5, 1.0, (n, m))  # deal strength
        if self.config.duplicate_signal is not None:
            src, dst = self.config.duplicate_signal
            phi[..., dst] = phi[..., src]
        for j in self.config.inverted_signals:
            phi[..., j] = 1.0 - phi[..., j]

        # "none" stays at logit 0; deeper levels rise with the utility (softmax is shift-invariant otherwise).
        logits = np.concatenate([np.zeros((n, m, 1)), util[..., None] - LEVEL_OFFSETS[1:]], axis=-1)
        logits -= logits.max(axis=-1, keepdims=True)
        q = np.exp(logits)
        q /= q.sum(axis=-1, keepdims=True)

        top_aff = -np.sort(-aff, axis=1)[:, :3]
        top_spend = -np.sort(-spend, axis=1)[:, :5]
        states = np.concatenate(
            [
                np.stack([lux, hes, purchases, diversity], axis=1),
                top_aff,
                top_spend,
                np.stack(
                    [
                        np.full(n, m, dtype=np.float64),
                        price.mean(axis=1),
                        price.std(axis=1),
                        price.min(axis=1),
                        price.max(axis=1),
                        des.mean(axis=1),
                        disc.sum(axis=1),
                    ],
                    axis=1,
                ),
                session,
            ],
            axis=1,
        ).astype(np.float32)
        return Contexts(
            states=states,
            signals=phi,
            level_probs=q,
            prices=price,
            categories=cat,
            brands=brand,
            discounted=disc,
            desirability=des,
            brand_affinity=aff,
            category_spend=spend,
            session=session,
            user=np.stack([lux, hes, purchases, diversity], axis=1),
        )

    # ---------------------------------------------------------------- ranking and truth
    def rank(self, ctx: Contexts, actions: np.ndarray) -> np.ndarray:
        """Indices [n, K] of the shown candidates, best first, under weights [n, 7]."""
        scores = np.einsum("nmj,nj->nm", ctx.signals, np.asarray(actions, dtype=np.float64))
        k = self.config.n_shown
        # Ties are impossible with continuous signals; a stable sort keeps the order deterministic anyway.
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]

    def expected_outcomes(self, ctx: Contexts, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact expected conversion [n] and expected reward [n] of each context under its action."""
        shown = self.rank(ctx, actions)
        q = gather(ctx.level_probs, shown)  # [n, K, 5]
        theta = self.examination[None, :, None]
        p = theta * q  # P(level l at position k) for l >= 1
        p0 = 1.0 - self.examination[None, :] + p[..., 0]  # P(nothing at position k)
        # F[..., c] = P(level at position k <= c)
        cdf = np.concatenate([p0[..., None], p0[..., None] + np.cumsum(p[..., 1:], axis=-1)], axis=-1)
        cdf = np.clip(cdf, 1e-300, 1.0)
        conversion = 1.0 - np.prod(cdf[..., 3], axis=1)

        cfg = self.config.reward
        pw = self.position_weights[None, :]
        price = np.take_along_axis(ctx.prices, shown, axis=1)
        mult = np.minimum(price / REVENUE_SCALE, REVENUE_CAP)
        reward = (p[..., 4] * pw * cfg.action_values["purchase"] * mult).sum(axis=1)
        reward += cfg.no_interaction_penalty * np.prod(cdf[..., 0], axis=1)
        for c, name in ((1, "click"), (2, "wishlist"), (3, "cart")):
            all_c = np.prod(cdf[..., c], axis=1, keepdims=True)
            all_below = np.prod(cdf[..., c - 1], axis=1, keepdims=True)
            # P(position k interacted, deepest level overall == c)
            p_k = (cdf[..., c] - cdf[..., 0]) * all_c / cdf[..., c] - (cdf[..., c - 1] - cdf[..., 0]) * all_below / cdf[
                ..., c - 1
            ]
            reward += cfg.action_values[name] * (p_k * pw).sum(axis=1)
        return conversion, reward

    def true_value(
        self,
        policy: Policy,
        exploration: DirichletExploration | None = None,
        n_contexts: int = 50_000,
        seed: int = 12345,
    ) -> Value:
        """Expected conversion and reward of a policy (served with `exploration`, or its mean when None).

        Monte Carlo over contexts (and served actions), closed form over user responses; the standard errors
        are those of the mean over contexts. Use the same seed for two policies to compare them with common
        random numbers.
        """
        rng = np.random.default_rng(seed)
        convs, rews = [], []
        for start in range(0, n_contexts, 20_000):
            ctx = self.contexts(min(20_000, n_contexts - start), rng)
            mean = policy(ctx.states)
            actions = mean if exploration is None else exploration.sample(mean, rng)[0]
            c, r = self.expected_outcomes(ctx, actions)
            convs.append(c)
            rews.append(r)
        c, r = np.concatenate(convs), np.concatenate(rews)
        return Value(
            conversion=float(c.mean()),
            conversion_se=float(c.std(ddof=1) / np.sqrt(len(c))),
            reward=float(r.mean()),
            reward_se=float(r.std(ddof=1) / np.sqrt(len(r))),
            n=len(c),
        )

    # ---------------------------------------------------------------- the logging policy
    def standardise(self, states: np.ndarray) -> np.ndarray:
        return (np.asarray(states, dtype=np.float64) - self.state_mean) / self.state_std

    def logging_policy(self, states: np.ndarray) -> np.ndarray:
        """The logger's mean weights: a mildly personalised softmax favouring popularity signals."""
        z = self.logging_base + self.standardise(states) @ self.logging_w
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    # ---------------------------------------------------------------- realised outcomes
    def sample_levels(
        self, ctx: Contexts, actions: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Shown candidates [n, K] and the realised level [n, K] at each position (0 none … 4 purchase)."""
        shown = self.rank(ctx, actions)
        n, k = shown.shape
        q = gather(ctx.level_probs, shown)
        examined = rng.random((n, k)) < self.examination[None, :]
        u = rng.random((n, k, 1))
        level = (u > np.cumsum(q, axis=-1)).sum(axis=-1)  # inverse-CDF draw of the level
        return shown, np.minimum(level, 4) * examined
