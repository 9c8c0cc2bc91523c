"""Logged traffic of the simulated world: events in the exact schema (JSON) or logged rows as arrays (fast).

`simulate` serves a policy with exploration, draws each search's outcome from the world's user model and writes
the event as the search engine would log it, with its propensity; `logged_holdout` does the same straight into
the arrays the gate evaluates (no JSON), for sweeps and tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import numpy as np
import orjson

from common.exploration import DirichletExploration
from common.reward import REVENUE_CAP, REVENUE_SCALE
from common.schema import ACTION_KEYS
from rankrl.sim.world import BRANDS, CATEGORIES, LEVELS, Contexts, Policy, RankingWorld


def logged_holdout(
    world: RankingWorld,
    ctx: Contexts,
    rng: np.random.Generator,
    policy: Policy | None = None,
    exploration: DirichletExploration | None = None,
) -> dict[str, np.ndarray]:
    """Logged rows for these contexts without going through JSON (fast, for sweeps and tests).

    Keys: states, actions, log_density, converted, reward, revenue, first_purchase_rank, and the exact
    expected conversion of each row (`expected_conversion`), all computed as the events would carry them.
    """
    mean = (policy or world.logging_policy)(ctx.states)
    actions, logp = (exploration or DirichletExploration()).sample(mean, rng)
    shown, level = world.sample_levels(ctx, actions, rng)
    cfg = world.config.reward
    price = np.take_along_axis(ctx.prices, shown, axis=1)
    bought = level == 4
    deepest = level.max(axis=1)
    pw = world.position_weights[None, :]
    values = np.array([0.0, *(cfg.action_values[a] for a in ("click", "wishlist", "cart", "purchase"))])
    purchase_reward = (
        bought * pw * cfg.action_values["purchase"] * np.minimum(price / REVENUE_SCALE, REVENUE_CAP)
    ).sum(1)
    other_reward = ((level > 0) * pw).sum(axis=1) * values[deepest]
    reward = np.where(deepest == 4, purchase_reward, np.where(deepest == 0, cfg.no_interaction_penalty, other_reward))
    first = np.where(bought.any(axis=1), bought.argmax(axis=1) + 1, 0)
    conv_exp, _ = world.expected_outcomes(ctx, actions)
    return {
        "states": ctx.states,
        "actions": actions.astype(np.float32),
        "log_density": logp,
        "converted": bought.any(axis=1),
        "reward": reward,
        "revenue": (bought * price).sum(axis=1),
        "first_purchase_rank": first,
        "expected_conversion": conv_exp,
    }


def simulate(
    world: RankingWorld,
    n: int,
    seed: int,
    policy: Policy | None = None,
    exploration: DirichletExploration | None = None,
    start_time: float | None = None,
    interval_s: float = 0.05,
    policy_version: str = "logging",
    log_propensity: bool = True,
    batch: int = 10_000,
) -> Iterator[tuple[Contexts, np.ndarray, np.ndarray, list[dict]]]:
    """Yield batches of (contexts, served actions, log-densities, events in the original pipeline's schema).

    `policy` defaults to the logging policy, served with `exploration` (default Dirichlet, kappa 100);
    `exploration=None` with `policy` given serves the mean deterministically (no propensity logged).
    """
    rng = np.random.default_rng(seed)
    pol = policy or world.logging_policy
    # Logged traffic lies in the past: by default the last event is stamped now.
    t0 = datetime.now(UTC).timestamp() - n * interval_s if start_time is None else start_time
    i = 0
    for start in range(0, n, batch):
        ctx = world.contexts(min(batch, n - start), rng)
        mean = pol(ctx.states)
        if exploration is None and policy is not None:
            actions, logp = mean, np.full(len(ctx), np.nan)
        else:
            actions, logp = (exploration or DirichletExploration()).sample(mean, rng)
        events = _events(world, ctx, actions, logp if log_propensity else None, rng, t0, i, interval_s, policy_version)
        i += len(ctx)
        yield ctx, actions, logp, events


def _events(
    world: RankingWorld,
    ctx: Contexts,
    actions: np.ndarray,
    logp: np.ndarray | None,
    rng: np.random.Generator,
    t0: float,
    i0: int,
    interval_s: float,
    policy_version: str,
) -> list[dict]:
    shown = served_outcomes(world, ctx, actions, rng)
    ids = rng.integers(0, 2**63, size=(len(ctx), 2))
    states = event_states(ctx)
    events = []
    for r, (ranking, meta, outcomes) in enumerate(shown):
        ev: dict[str, object] = {
            "log_id": str(uuid.UUID(int=(int(ids[r, 0]) << 64) | int(ids[r, 1]), version=4)),
            "created_at": datetime.fromtimestamp(t0 + (i0 + r) * interval_s, UTC).isoformat(),
            "session_id": f"s{int(ids[r, 0]) % 10**9:09d}",
            "state": states[r],
            "action": {key: float(actions[r, j]) for j, key in enumerate(ACTION_KEYS)},
            "ranking": ranking,
            "ranking_metadata": meta,
            "outcomes": outcomes,
            "reward": None,
            "policy_version": policy_version,
        }
        if logp is not None and np.isfinite(logp[r]):
            ev["log_propensity"] = float(logp[r])
        events.append(ev)
    return events


def event_states(ctx: Contexts) -> list[dict]:
    """Each search's `state` object as the search engine logs it (and sends it to `rankrl serve`)."""
    out = []
    for r in range(len(ctx)):
        st = ctx.states[r]
        a_r, s_r = ctx.brand_affinity[r], ctx.category_spend[r]
        out.append(
            {
                "user_features": {
                    "luxury_affinity": float(ctx.user[r, 0]),
                    "hesitation_count": int(ctx.user[r, 1]),
                    "purchase_count": int(ctx.user[r, 2]),
                    "category_diversity": float(ctx.user[r, 3]),
                    "brand_affinity": {BRANDS[j]: float(a_r[j]) for j in np.flatnonzero(a_r)},
                    "avg_category_spend": {CATEGORIES[j]: float(s_r[j]) for j in np.flatnonzero(s_r)},
                },
                "candidate_features": {
                    "count": int(st[12]),
                    "price_mean": float(st[13]),
                    "price_std": float(st[14]),
                    "price_min": float(st[15]),
                    "price_max": float(st[16]),
                    "avg_desirability": float(st[17]),
                    "discounted_count": int(st[18]),
                },
                "session_features": {
                    "query_length": int(ctx.session[r, 0]),
                    "query_has_brand": bool(ctx.session[r, 1]),
                    "query_has_price_terms": bool(ctx.session[r, 2]),
                    "previous_searches_count": int(ctx.session[r, 3]),
                },
            }
        )
    return out


def served_outcomes(
    world: RankingWorld, ctx: Contexts, actions: np.ndarray, rng: np.random.Generator
) -> list[tuple[list[str], list[dict], dict]]:
    """Rank each search's candidates with the served weights and draw what its user did: per search the ranking
    shown (product ids), its metadata and the `outcomes` object, as the search engine reports them."""
    shown, level = world.sample_levels(ctx, actions, rng)
    out = []
    for r in range(len(shown)):
        ranks = [int(j) + 1 for j in np.flatnonzero(level[r])]
        pidx = shown[r]
        prod_ids = [f"p{int(ctx.brands[r, j]):02d}{int(ctx.categories[r, j])}{int(j):03d}" for j in pidx]
        meta = [
            {
                "product_id": prod_ids[t],
                "price": round(float(ctx.prices[r, j]), 2),
                "category": CATEGORIES[int(ctx.categories[r, j])],
                "brand": BRANDS[int(ctx.brands[r, j])],
                "discounted": bool(ctx.discounted[r, j]),
            }
            for t, j in enumerate(pidx)
        ]
        purchased = [rk for rk in ranks if level[r, rk - 1] == 4]
        outcomes = {
            "user_action": LEVELS[int(level[r].max())],
            "purchased_ranks": purchased,
            "purchased_total_value": round(float(sum(ctx.prices[r, pidx[rk - 1]] for rk in purchased)), 2),
            "interacted_ranks": ranks,
        }
        out.append((prod_ids, meta, outcomes))
    return out


def write_jsonl(
    world: RankingWorld,
    path: str,
    n: int,
    seed: int,
    on_batch: Callable[[int], object] | None = None,
    **kwargs: object,
) -> int:
    """Write n logged events to a JSONL file; returns the count. `on_batch(k)` after each batch of k (progress)."""
    written = 0
    with open(path, "wb") as f:
        for _, _, _, events in simulate(world, n, seed, **kwargs):  # type: ignore[arg-type]
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in events))
            written += len(events)
            if on_batch is not None:
                on_batch(len(events))
    return written


def decision_records(events: list[dict], rng: np.random.Generator, max_delay_s: float) -> tuple[list[dict], list[dict]]:
    """Logged events as `rankrl serve` logs them: one decision per search (what was known and served) and, for each
    search whose user did something, its outcome as the search engine reports it, 0 to `max_delay_s` later
    (stamped then; no report is the default "none"). Outcomes come back in the order they were reported."""
    decisions, outcomes = [], []
    for ev in events:
        d = {k: ev[k] for k in ("log_id", "created_at", "state", "action", "policy_version", "session_id")}
        d["log_propensity"] = ev["log_propensity"]
        decisions.append(d)
        if ev["outcomes"]["user_action"] != "none":
            t = datetime.fromisoformat(ev["created_at"]).timestamp() + float(rng.uniform(0.0, max_delay_s))
            o = {k: ev[k] for k in ("log_id", "ranking", "ranking_metadata", "outcomes")}
            outcomes.append({**o, "created_at": t})
    outcomes.sort(key=lambda o: o["created_at"])
    for o in outcomes:
        o["created_at"] = datetime.fromtimestamp(o["created_at"], UTC).isoformat()
    return decisions, outcomes


def write_decision_logs(world: RankingWorld, decisions_path: str, outcomes_path: str, n: int, seed: int,
                        max_delay_s: float = 5.0, **kwargs: object) -> int:  # fmt: skip
    """Write n logged searches as the decision service's two logs (JSONL, what the streamer's join reads)."""
    rng = np.random.default_rng(seed + 7)
    with open(decisions_path, "wb") as fd, open(outcomes_path, "wb") as fo:
        for _, _, _, events in simulate(world, n, seed, **kwargs):  # type: ignore[arg-type]
            decisions, outcomes = decision_records(events, rng, max_delay_s)
            fd.write(b"".join(orjson.dumps(d) + b"\n" for d in decisions))
            fo.write(b"".join(orjson.dumps(o) + b"\n" for o in outcomes))
    return n


def buffer_columns(world: RankingWorld, policy: Policy, ex: DirichletExploration, n: int, rng: np.random.Generator,
                   t0: float, first_id: int) -> dict[str, np.ndarray]:  # fmt: skip
    """Buffer columns of n searches served by `policy` with exploration, as the streamer would store them (every
    column but the source partition and offset), stamped from `t0` at 20 a second with log-id hashes from
    `first_id`: the loop benchmark and the learning test feed the trainer's real cycle with them."""
    d = logged_holdout(world, world.contexts(n, rng), rng, policy=policy, exploration=ex)
    return {
        "state": d["states"].astype(np.float32),
        "action": d["actions"].astype(np.float32),
        "reward": d["reward"].astype(np.float32),
        "converted": d["converted"].astype(np.uint8),
        "revenue": d["revenue"].astype(np.float32),
        "first_purchase_rank": d["first_purchase_rank"].astype(np.int16),
        "log_propensity": d["log_density"].astype(np.float64),
        "event_time": t0 + np.arange(n, dtype=np.float64) * 0.05,
        "log_id_hash": np.arange(first_id, first_id + n, dtype=np.uint64),
    }
