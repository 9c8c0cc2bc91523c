"""The reward of one search: the original pipeline's function of the user's deepest action, the ranks and the prices.

Choices, each from the original pipeline unless marked:
- `user_action == "none"` -> `no_interaction_penalty` (-5.0): a search that shows nothing wanted is a cost.
- `"purchase"` -> sum over `purchased_ranks` of
  `position_weights[rank] * action_values["purchase"] * min(price / 1000, 3.0)`.
  The price is that of the product at that rank: looked up in `ranking_metadata` by the ranked product id,
  else by position; when no price is known, `purchased_total_value` split evenly over the purchased ranks
  (rankrl's fallback). The multiplier is capped at 3.0 so one luxury purchase cannot dominate a batch.
- `"click"` / `"wishlist"` / `"cart"` -> sum over `interacted_ranks` of `position_weights[rank] *
  action_values[action]`, with no revenue multiplier; with no ranks given, the action counts once at weight 1.0.
- Ranks are 1-based (rank 1 is the top). A rank past the end of `position_weights` uses its last weight
  (a purchase at rank 25 still earns a little, not an IndexError).
- A purchase with an empty `purchased_ranks` also counts once at weight 1.0, priced from
  `purchased_total_value` (rankrl's choice: the purchase happened, its place is unknown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.schema import SearchLogEvent

REVENUE_SCALE = 1000.0
REVENUE_CAP = 3.0


def _default_position_weights() -> tuple[float, ...]:
    return (1.0, 0.85, 0.7, 0.55, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05)


def _default_action_values() -> dict[str, float]:
    return {"click": 0.5, "wishlist": 2.0, "cart": 5.0, "purchase": 20.0}


@dataclass(frozen=True)
class RewardConfig:
    """Weights of the reward function (the original pipeline's defaults)."""

    position_weights: tuple[float, ...] = field(default_factory=_default_position_weights)
    action_values: Mapping[str, float] = field(default_factory=_default_action_values)
    no_interaction_penalty: float = -5.0

    def __post_init__(self) -> None:
        if not self.position_weights:
            raise ValueError("reward.position_weights must not be empty")
        missing = {"click", "wishlist", "cart", "purchase"} - set(self.action_values)
        if missing:
            raise ValueError(f"reward.action_values lacks {sorted(missing)}")

    def position_weight(self, rank: int) -> float:
        """Weight of a 1-based rank; ranks past the list use its last weight."""
        pw = self.position_weights
        return pw[rank - 1] if rank <= len(pw) else pw[-1]


def revenue_multiplier(price: float) -> float:
    return min(price / REVENUE_SCALE, REVENUE_CAP)


def _price_at(rank: int, ranking: Sequence[str], metadata: Sequence[tuple[Any, Any]]) -> float | None:
    """Price of the product at a 1-based rank: by product id, else by position; None when unknown."""
    if rank <= len(ranking):
        pid = ranking[rank - 1]
        for product_id, price in metadata:
            if product_id == pid and price is not None:
                return float(price)
    if rank <= len(metadata) and metadata[rank - 1][1] is not None:
        return float(metadata[rank - 1][1])
    return None


def _ranking_and_prices(event: SearchLogEvent | Mapping[str, Any]) -> tuple[Sequence[str], list[tuple[Any, Any]]]:
    """The ranked product ids and (product_id, price) pairs of the ranking metadata."""
    if isinstance(event, SearchLogEvent):
        return event.ranking, [(m.product_id, m.price) for m in event.ranking_metadata]
    meta = event.get("ranking_metadata") or []
    return event.get("ranking") or [], [(m.get("product_id"), m.get("price")) for m in meta]


def compute_reward(event: SearchLogEvent | Mapping[str, Any], config: RewardConfig | None = None) -> float:
    """The reward of one search (a parsed event or the raw dict). See the module docstring for each case."""
    cfg = config or _DEFAULT
    if isinstance(event, SearchLogEvent):
        o = event.outcomes
        action, purchased, total_value, interacted = (
            o.user_action,
            o.purchased_ranks,
            o.purchased_total_value,
            o.interacted_ranks,
        )
    else:
        od = event["outcomes"]
        action = od["user_action"]
        purchased = od.get("purchased_ranks") or []
        total_value = float(od.get("purchased_total_value") or 0.0)
        interacted = od.get("interacted_ranks")
    if action == "none":
        return cfg.no_interaction_penalty
    value = cfg.action_values[action]
    if action == "purchase":
        ranks = list(purchased)
        if not ranks:
            return value * revenue_multiplier(total_value)
        even_split = total_value / len(ranks)
        ranking, metadata = _ranking_and_prices(event)
        reward = 0.0
        for r in ranks:
            price = _price_at(r, ranking, metadata)
            reward += cfg.position_weight(r) * value * revenue_multiplier(even_split if price is None else price)
        return reward
    if not interacted:
        return value
    return sum(cfg.position_weight(r) * value for r in interacted)


_DEFAULT = RewardConfig()
