"""The 23-dim state layout, field by field, and the action vector."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from common.features import (
    STATE_DIM,
    STATE_FEATURE_NAMES,
    extract_action_vector,
    extract_batch,
    extract_state_matrix,
    extract_state_vector,
)
from common.schema import parse_event
from tests.helpers import original_example_event

EXPECTED = {
    "luxury_affinity": 0.7,
    "hesitation_count": 2,
    "purchase_count": 5,
    "category_diversity": 0.6,
    "brand_affinity_top1": 0.9,
    "brand_affinity_top2": 0.8,
    "brand_affinity_top3": 0.5,  # of 0.9, 0.8, 0.3, 0.5: descending, top 3
    "avg_category_spend_top1": 300.0,
    "avg_category_spend_top2": 150.0,
    "avg_category_spend_top3": 0.0,  # zero-padded
    "avg_category_spend_top4": 0.0,
    "avg_category_spend_top5": 0.0,
    "candidate_count": 20,
    "price_mean": 120.5,
    "price_std": 45.2,
    "price_min": 80.0,  # absent from the state: from ranking_metadata prices
    "price_max": 4000.0,
    "avg_desirability": 0.65,
    "discounted_count": 8,
    "query_length": 3,
    "query_has_brand": 1.0,
    "query_has_price_terms": 0.0,  # absent: defaults to false
    "previous_searches_count": 2,
}


def test_layout_field_by_field() -> None:
    assert len(STATE_FEATURE_NAMES) == STATE_DIM == 23
    assert list(EXPECTED) == list(STATE_FEATURE_NAMES)
    ev = original_example_event()
    from_dict = extract_state_vector(ev["state"], ev["ranking_metadata"])
    from_event = extract_state_vector(parse_event(orjson.dumps(ev)))
    assert from_dict.dtype == np.float32
    for i, name in enumerate(STATE_FEATURE_NAMES):
        assert from_dict[i] == pytest.approx(EXPECTED[name], rel=1e-6), name
    np.testing.assert_array_equal(from_dict, from_event)


def test_state_fields_present_win_over_metadata() -> None:
    ev = original_example_event()
    ev["state"]["candidate_features"].update(price_min=5.0, price_max=6.0)
    ev["state"]["session_features"]["query_has_price_terms"] = True
    v = extract_state_vector(parse_event(ev))
    names = list(STATE_FEATURE_NAMES)
    assert v[names.index("price_min")] == 5.0
    assert v[names.index("price_max")] == 6.0
    assert v[names.index("query_has_price_terms")] == 1.0


def test_price_range_falls_back_to_mean_without_prices() -> None:
    ev = original_example_event(ranking_metadata=[])
    v = extract_state_vector(ev["state"])  # original API: the state dict alone
    names = list(STATE_FEATURE_NAMES)
    assert v[names.index("price_min")] == v[names.index("price_max")] == pytest.approx(120.5)


def test_action_vector_normalised_in_order() -> None:
    ev = original_example_event()
    a = extract_action_vector(ev["action"])
    raw = np.array([0.4, 0.6, 0.15, 0.5, 0.5, 0.1, 0.3])
    np.testing.assert_allclose(a, raw / raw.sum(), rtol=1e-6)
    np.testing.assert_allclose(extract_action_vector(parse_event(ev)), a)
    with pytest.raises(ValueError, match="zero"):
        extract_action_vector({k: 0.0 for k in ev["action"]})


def test_batch_matches_single() -> None:
    events = [parse_event(original_example_event(log_id=f"l{i}")) for i in range(5)]
    states, actions = extract_batch(events)
    assert states.shape == (5, 23) and actions.shape == (5, 7)
    np.testing.assert_array_equal(states[3], extract_state_vector(events[3]))
    np.testing.assert_allclose(actions[2], extract_action_vector(events[2]), rtol=1e-6)
    np.testing.assert_array_equal(extract_state_matrix(events), states)
