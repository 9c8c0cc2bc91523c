"""State and action feature extraction: the 23-dim state vector and the 7-dim action vector.

State layout (float32, in this order; `STATE_FEATURE_NAMES` spells it out):

    0-3    user: luxury_affinity, hesitation_count, purchase_count, category_diversity
    4-6    user: top-3 brand_affinity values, descending, zero-padded
    7-11   user: top-5 avg_category_spend values, descending, zero-padded
    12-18  candidates: count, price_mean, price_std, price_min, price_max, avg_desirability, discounted_count
    19-22  session: query_length, query_has_brand, query_has_price_terms, previous_searches_count

price_min / price_max fall back to the ranking_metadata prices when the state lacks them (then to
price_mean when there are no prices either); query_has_price_terms defaults to false.
The action is the seven weights in `ACTION_KEYS` order, normalised to sum to 1 (the ranking depends only on
their ratios).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from common.schema import ACTION_KEYS, Action, RankedItem, SearchLogEvent, State

N_BRANDS = 3
N_CATEGORIES = 5
STATE_FEATURE_NAMES: tuple[str, ...] = (
    "luxury_affinity",
    "hesitation_count",
    "purchase_count",
    "category_diversity",
    *(f"brand_affinity_top{i + 1}" for i in range(N_BRANDS)),
    *(f"avg_category_spend_top{i + 1}" for i in range(N_CATEGORIES)),
    "candidate_count",
    "price_mean",
    "price_std",
    "price_min",
    "price_max",
    "avg_desirability",
    "discounted_count",
    "query_length",
    "query_has_brand",
    "query_has_price_terms",
    "previous_searches_count",
)
STATE_DIM = len(STATE_FEATURE_NAMES)  # 23
ACTION_DIM = len(ACTION_KEYS)  # 7


def _top(values: Iterable[float], k: int) -> list[float]:
    top = sorted(values, reverse=True)[:k]
    return top + [0.0] * (k - len(top))


def _fill_from_dict(out: np.ndarray, state: Mapping[str, Any], metadata: Sequence[Mapping[str, Any]] | None) -> None:
    u = state.get("user_features", {})
    c = state.get("candidate_features", {})
    s = state.get("session_features", {})
    price_mean = float(c.get("price_mean", 0.0))
    price_min, price_max = c.get("price_min"), c.get("price_max")
    if price_min is None or price_max is None:
        prices = [float(m["price"]) for m in (metadata or ()) if m.get("price") is not None]
        price_min = (min(prices) if prices else price_mean) if price_min is None else price_min
        price_max = (max(prices) if prices else price_mean) if price_max is None else price_max
    out[:] = (
        u.get("luxury_affinity", 0.0),
        u.get("hesitation_count", 0),
        u.get("purchase_count", 0),
        u.get("category_diversity", 0.0),
        *_top(u.get("brand_affinity", {}).values(), N_BRANDS),
        *_top(u.get("avg_category_spend", {}).values(), N_CATEGORIES),
        c.get("count", 0),
        price_mean,
        c.get("price_std", 0.0),
        price_min,
        price_max,
        c.get("avg_desirability", 0.0),
        c.get("discounted_count", 0),
        s.get("query_length", 0),
        1.0 if s.get("query_has_brand", False) else 0.0,
        1.0 if s.get("query_has_price_terms", False) else 0.0,
        s.get("previous_searches_count", 0),
    )


def _fill_from_struct(out: np.ndarray, state: State, metadata: Sequence[RankedItem]) -> None:
    out[:] = state_tuple(state, metadata)


def state_tuple(state: State, metadata: Sequence[RankedItem]) -> tuple[float, ...]:
    """The 23 features of a parsed state as a plain tuple (batch builders turn many into one array)."""
    u, c, s = state.user_features, state.candidate_features, state.session_features
    price_min, price_max = c.price_min, c.price_max
    if price_min is None or price_max is None:
        prices = [m.price for m in metadata if m.price is not None]
        price_min = (min(prices) if prices else c.price_mean) if price_min is None else price_min
        price_max = (max(prices) if prices else c.price_mean) if price_max is None else price_max
    return (
        u.luxury_affinity,
        u.hesitation_count,
        u.purchase_count,
        u.category_diversity,
        *_top(u.brand_affinity.values(), N_BRANDS),
        *_top(u.avg_category_spend.values(), N_CATEGORIES),
        c.count,
        c.price_mean,
        c.price_std,
        price_min,
        price_max,
        c.avg_desirability,
        c.discounted_count,
        s.query_length,
        1.0 if s.query_has_brand else 0.0,
        1.0 if s.query_has_price_terms else 0.0,
        s.previous_searches_count,
    )


def _fill(out: np.ndarray, state: Any, metadata: Any) -> None:
    if isinstance(state, SearchLogEvent):
        _fill_from_struct(out, state.state, state.ranking_metadata)
    elif isinstance(state, State):
        _fill_from_struct(out, state, metadata or ())
    else:
        _fill_from_dict(out, state, metadata)


def extract_state_vector(
    state: Mapping[str, Any] | State | SearchLogEvent, ranking_metadata: Sequence[Any] | None = None
) -> np.ndarray:
    """The 23-dim float32 state vector of a state dict (the original API), a parsed state, or a parsed event."""
    out = np.empty(STATE_DIM, dtype=np.float32)
    _fill(out, state, ranking_metadata)
    return out


def extract_action_vector(action: Mapping[str, Any] | Action | SearchLogEvent) -> np.ndarray:
    """The seven weights in ACTION_KEYS order, normalised to sum to 1. An all-zero action is invalid."""
    a = action.action if isinstance(action, SearchLogEvent) else action
    if isinstance(a, Action):
        vec = np.array(a.weights(), dtype=np.float64)
    else:
        vec = np.array([float(a.get(k, 0.0)) for k in ACTION_KEYS], dtype=np.float64)
    if (vec < 0).any() or not np.isfinite(vec).all():
        raise ValueError(f"action weights must be finite and >= 0, got {vec.tolist()}")
    top = vec.max()
    if top <= 0:
        raise ValueError("all seven action weights are zero: the ranking is undefined")
    vec /= top  # before summing: seven weights of 1e308 would overflow the sum (only ratios matter)
    return (vec / vec.sum()).astype(np.float32)


def extract_batch(events: Sequence[SearchLogEvent]) -> tuple[np.ndarray, np.ndarray]:
    """State [n, 23] and action [n, 7] matrices of many events, filled in place (no per-row arrays)."""
    states = np.empty((len(events), STATE_DIM), dtype=np.float32)
    actions = np.empty((len(events), ACTION_DIM), dtype=np.float64)
    for i, ev in enumerate(events):
        _fill_from_struct(states[i], ev.state, ev.ranking_metadata)
        actions[i] = ev.action.weights()
    actions /= actions.max(axis=1, keepdims=True)  # first: a sum of huge weights would overflow
    actions /= actions.sum(axis=1, keepdims=True)
    return states, actions.astype(np.float32)


def extract_state_matrix(states: Sequence[Mapping[str, Any] | State | SearchLogEvent]) -> np.ndarray:
    """The batch version of `extract_state_vector`: [n, 23] float32."""
    out = np.empty((len(states), STATE_DIM), dtype=np.float32)
    for i, st in enumerate(states):
        _fill(out[i], st, None)
    return out
