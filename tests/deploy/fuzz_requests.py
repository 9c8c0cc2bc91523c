"""Rank requests of every shape the rank-request schema allows (and a few it refuses), for the fuzz and property
tests of the decision path: edge values of every bounded field, absent optional fields, empty and long candidate
lists, flags as booleans or 0/1, caller log ids or none."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

EDGES = (0.0, 1e-300, 0.5, 1.0, 7.25, 1e6, 1e9)


def _amount(rng: np.random.Generator) -> float:
    return float(rng.choice(EDGES)) if rng.random() < 0.3 else float(rng.uniform(0, 1e4))


def _unit(rng: np.random.Generator) -> float:
    return float(rng.choice((0.0, 1.0, 1e-9))) if rng.random() < 0.3 else float(rng.random())


def random_rank_request(rng: np.random.Generator, i: int) -> dict[str, Any]:
    cf: dict[str, Any] = {"count": _amount(rng), "price_mean": _amount(rng), "price_std": _amount(rng),
                          "avg_desirability": _unit(rng), "discounted_count": _amount(rng)}  # fmt: skip
    shape = rng.integers(4)
    if shape == 1:
        cf["price_min"] = _amount(rng)
    elif shape == 2:
        cf["price_max"] = _amount(rng)
    elif shape == 3:  # both, sometimes crossed (refused as inconsistent)
        lo, hi = sorted((_amount(rng), _amount(rng)))
        cf.update(price_min=lo, price_max=hi) if rng.random() < 0.9 else cf.update(price_min=hi + 1, price_max=lo)
    n_meta = int(rng.choice((0, 1, 3, 30)))
    meta = [{"product_id": f"p{k}", "price": None if rng.random() < 0.2 else _amount(rng),
             "category": None if rng.random() < 0.5 else "shoes"} for k in range(n_meta)]  # fmt: skip
    flag = (lambda: bool(rng.random() < 0.5)) if rng.random() < 0.5 else (lambda: int(rng.integers(2)))
    req: dict[str, Any] = {
        "state": {
            "user_features": {
                "luxury_affinity": _unit(rng), "hesitation_count": _amount(rng), "purchase_count": _amount(rng),
                "category_diversity": _unit(rng),
                "brand_affinity": {f"b{k}": _unit(rng) for k in range(int(rng.integers(0, 6)))},
                "avg_category_spend": {f"c{k}": _amount(rng) for k in range(int(rng.integers(0, 8)))},
            },
            "candidate_features": cf,
            "session_features": {"query_length": _amount(rng), "query_has_brand": flag(),
                                 "previous_searches_count": _amount(rng), "query_has_price_terms": flag()},
        },
    }  # fmt: skip
    if meta or rng.random() < 0.5:
        req["ranking_metadata"] = meta
    if rng.random() < 0.5:
        req["log_id"] = f"fuzz-{i}"
    if rng.random() < 0.3:
        req["session_id"] = f"s{i}"
    return req


def random_rank_requests(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [random_rank_request(rng, i) for i in range(n)]


@st.composite
def rank_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A hypothesis strategy over the same space (seeded generator per example, so shrinking stays meaningful)."""
    seed = draw(st.integers(0, 2**32 - 1))
    return random_rank_request(np.random.default_rng(seed), draw(st.integers(0, 10**6)))
