"""The reward pinned against hand-computed values for each action type and rank case."""

from __future__ import annotations

import pytest

from common.reward import RewardConfig, compute_reward
from common.schema import parse_event
from tests.helpers import original_example_event

# position weights 1.0, 0.85, 0.7, 0.55, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05 ; prices 199, 2500, 4000, 80


def _both(outcomes: dict, **kw: object) -> tuple[float, float]:
    ev = original_example_event(outcomes=outcomes, **kw)
    return compute_reward(ev), compute_reward(parse_event(ev))


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ({"user_action": "none"}, -5.0),
        # rank 1, price 199: 1.0 * 20 * 0.199
        ({"user_action": "purchase", "purchased_ranks": [1], "purchased_total_value": 199.0}, 3.98),
        # rank 2, price 2500: 0.85 * 20 * 2.5
        ({"user_action": "purchase", "purchased_ranks": [2], "purchased_total_value": 2500.0}, 42.5),
        # rank 3, price 4000 capped at 3.0: 0.7 * 20 * 3
        ({"user_action": "purchase", "purchased_ranks": [3], "purchased_total_value": 4000.0}, 42.0),
        # two purchases: 1.0*20*0.199 + 0.55*20*0.08
        ({"user_action": "purchase", "purchased_ranks": [1, 4], "purchased_total_value": 279.0}, 3.98 + 0.88),
        # no ranks: once at weight 1.0, priced from the total
        ({"user_action": "purchase", "purchased_ranks": [], "purchased_total_value": 500.0}, 10.0),
        ({"user_action": "click", "interacted_ranks": [1]}, 0.5),
        ({"user_action": "click", "interacted_ranks": [2, 4]}, 0.85 * 0.5 + 0.55 * 0.5),
        ({"user_action": "wishlist", "interacted_ranks": [3]}, 0.7 * 2.0),
        ({"user_action": "cart", "interacted_ranks": [1, 2]}, 1.0 * 5.0 + 0.85 * 5.0),
        ({"user_action": "cart"}, 5.0),  # no ranks: counts once at 1.0
        ({"user_action": "wishlist", "interacted_ranks": []}, 2.0),
    ],
)
def test_reward_cases(outcomes: dict, expected: float) -> None:
    a, b = _both(outcomes)
    assert a == pytest.approx(expected)
    assert b == pytest.approx(expected)


def test_rank_past_weight_list_uses_last_weight() -> None:
    ranking = [f"p{i}" for i in range(1, 16)]
    meta = [{"product_id": p, "price": 1000.0} for p in ranking]
    outcomes = {"user_action": "purchase", "purchased_ranks": [12], "purchased_total_value": 1000.0}
    a, b = _both(outcomes, ranking=ranking, ranking_metadata=meta)
    assert a == b == pytest.approx(0.05 * 20 * 1.0)
    a, b = _both({"user_action": "click", "interacted_ranks": [15]}, ranking=ranking, ranking_metadata=meta)
    assert a == b == pytest.approx(0.05 * 0.5)


def test_price_lookup_by_product_id_then_fallback_to_total() -> None:
    # metadata out of order: the price follows the product id, not the position
    meta = [
        {"product_id": "prod_2", "price": 2500.0},
        {"product_id": "prod_1", "price": 199.0},
    ]
    outcomes = {"user_action": "purchase", "purchased_ranks": [1], "purchased_total_value": 199.0}
    a, b = _both(outcomes, ranking_metadata=meta)
    assert a == b == pytest.approx(3.98)
    # no price at all: purchased_total_value split evenly over the purchased ranks
    outcomes = {"user_action": "purchase", "purchased_ranks": [1, 2], "purchased_total_value": 3000.0}
    a, b = _both(outcomes, ranking_metadata=[])
    assert a == b == pytest.approx(1.0 * 20 * 1.5 + 0.85 * 20 * 1.5)


def test_custom_config() -> None:
    cfg = RewardConfig(position_weights=(2.0,), no_interaction_penalty=-1.0)
    assert compute_reward(original_example_event(outcomes={"user_action": "none"}), cfg) == -1.0
    ev = original_example_event(outcomes={"user_action": "click", "interacted_ranks": [3]})
    assert compute_reward(ev, cfg) == pytest.approx(2.0 * 0.5)
    with pytest.raises(ValueError, match="position_weights"):
        RewardConfig(position_weights=())
