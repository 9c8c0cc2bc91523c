"""Shared test helpers: a hand-written valid event in the original pipeline's schema."""

from __future__ import annotations

import copy
from typing import Any


def original_example_event(**overrides: Any) -> dict[str, Any]:
    """A valid event close to the original pipeline's README example; `overrides` replace top-level fields."""
    ev: dict[str, Any] = {
        "log_id": "log-0001",
        "created_at": "2026-11-29T10:00:00Z",
        "state": {
            "user_features": {
                "luxury_affinity": 0.7,
                "hesitation_count": 2,
                "purchase_count": 5,
                "category_diversity": 0.6,
                "brand_affinity": {"chanel": 0.9, "hermes": 0.8, "gucci": 0.3, "prada": 0.5},
                "avg_category_spend": {"shoes": 150.0, "bags": 300.0},
            },
            "candidate_features": {
                "count": 20,
                "price_mean": 120.5,
                "price_std": 45.2,
                "avg_desirability": 0.65,
                "discounted_count": 8,
            },
            "session_features": {"query_length": 3, "query_has_brand": True, "previous_searches_count": 2},
        },
        "action": {
            "W_COLLAB_POS": 0.4,
            "W_COLLAB_NEG": 0.6,
            "W_TRAIT": 0.15,
            "W_BRAND": 0.5,
            "W_WISHLIST": 0.5,
            "W_MARKET_CONV": 0.1,
            "W_MARKET_DEAL": 0.3,
        },
        "ranking": ["prod_1", "prod_2", "prod_3", "prod_4"],
        "ranking_metadata": [
            {"product_id": "prod_1", "price": 199.0, "category": "shoes"},
            {"product_id": "prod_2", "price": 2500.0, "category": "bags"},
            {"product_id": "prod_3", "price": 4000.0, "category": "bags"},
            {"product_id": "prod_4", "price": 80.0, "category": "shoes"},
        ],
        "outcomes": {"user_action": "purchase", "purchased_ranks": [2], "purchased_total_value": 2500.0},
        "reward": None,
    }
    ev.update(copy.deepcopy(overrides))
    return ev
