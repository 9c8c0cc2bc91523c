"""Business metrics of logged holdout rows: what the logged policy actually achieved.

Per search: converted (any purchase), the first purchased rank (1-based; 0 = none), revenue, reward.
- conversion_rate: share of searches with a purchase.
- mrr: mean over searches of 1 / first purchased rank (0 for searches without a purchase).
- precision@k: mean over searches of (purchases in the top k) / k. The buffer keeps the first purchased rank
  only, so a search counts at most one purchase (exact for single-purchase searches, the common case).
- revenue_per_session: mean revenue per search; mean_reward: mean reward per search.
"""

from __future__ import annotations

import numpy as np

PRECISION_AT = (1, 3, 5, 10)


def business_metrics(
    converted: np.ndarray, first_purchase_rank: np.ndarray, revenue: np.ndarray, reward: np.ndarray
) -> dict[str, float]:
    conv = np.asarray(converted, dtype=np.float64)
    rank = np.asarray(first_purchase_rank, dtype=np.float64)
    n = len(conv)
    if n == 0:
        raise ValueError("business metrics of an empty holdout")
    recip = np.where(rank > 0, 1.0 / np.maximum(rank, 1.0), 0.0)
    out = {
        "searches": float(n),
        "conversions": float(conv.sum()),
        "conversion_rate": float(conv.mean()),
        "mrr": float(recip.mean()),
        "revenue_per_session": float(np.mean(revenue)),
        "mean_reward": float(np.mean(reward)),
    }
    for k in PRECISION_AT:
        out[f"precision_at_{k}"] = float(((rank > 0) & (rank <= k)).mean() / k)
    return out
