"""Business metrics of logged rows against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.business import business_metrics


def test_business_metrics_match_a_hand_computation() -> None:
    # Four searches: bought at rank 1, at rank 4, nothing, at rank 12.
    m = business_metrics(
        converted=np.array([1, 1, 0, 1]),
        first_purchase_rank=np.array([1, 4, 0, 12]),
        revenue=np.array([100.0, 50.0, 0.0, 10.0]),
        reward=np.array([20.0, 8.0, -5.0, 1.0]),
    )
    assert m["searches"] == 4 and m["conversions"] == 3
    assert m["conversion_rate"] == pytest.approx(3 / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 0 + 1 / 12) / 4)
    assert m["precision_at_1"] == pytest.approx((1 / 1) / 4)  # one search with a purchase in the top 1
    assert m["precision_at_3"] == pytest.approx((1 / 3) / 4)
    assert m["precision_at_5"] == pytest.approx((2 / 5) / 4)  # ranks 1 and 4
    assert m["precision_at_10"] == pytest.approx((2 / 10) / 4)  # rank 12 is past the top 10
    assert m["revenue_per_session"] == pytest.approx(160 / 4)
    assert m["mean_reward"] == pytest.approx(24 / 4)


def test_an_empty_holdout_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        business_metrics(np.array([]), np.array([]), np.array([]), np.array([]))
