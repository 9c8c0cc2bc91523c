"""Every InvalidEvent case names the field and the log id; valid events parse from bytes, str and dict."""

from __future__ import annotations

import math

import orjson
import pytest

from common.schema import InvalidEvent, parse_event
from tests.helpers import original_example_event


def _mutate(path: str, value: object) -> dict:
    ev = original_example_event()
    *parents, last = path.split(".")
    node = ev
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is _DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return ev


_DELETE = object()


@pytest.mark.parametrize("form", ["bytes", "str", "dict"])
def test_valid_event_parses_in_every_form(form: str) -> None:
    ev = original_example_event(propensity=2.5, policy_version="v3", session_id="s1")
    raw = {"bytes": orjson.dumps(ev), "str": orjson.dumps(ev).decode(), "dict": ev}[form]
    parsed = parse_event(raw)
    assert parsed.log_id == "log-0001"
    assert parsed.outcomes.user_action == "purchase"
    assert parsed.converted
    assert parsed.logging_log_density == pytest.approx(math.log(2.5))
    assert parsed.event_time == pytest.approx(1795946400.0)
    assert parsed.policy_version == "v3"


def test_optional_fields_and_unknown_fields() -> None:
    ev = original_example_event(log_propensity=-3.0, propensity=math.exp(-3.0), something_new={"x": 1})
    ev["state"]["candidate_features"]["price_min"] = 10.0
    ev["state"]["session_features"]["query_has_price_terms"] = True
    ev["outcomes"]["interacted_ranks"] = [1, 2]
    parsed = parse_event(orjson.dumps(ev))
    assert parsed.logging_log_density == -3.0  # log_propensity is used when both agree
    assert parsed.state.candidate_features.price_min == 10.0


CASES = [
    # (mutation path, value, reason, field named in the message)
    ("log_id", _DELETE, "missing_field", "log_id"),
    ("state.user_features.luxury_affinity", _DELETE, "missing_field", "state.user_features.luxury_affinity"),
    ("state.candidate_features", _DELETE, "missing_field", "state.candidate_features"),
    ("outcomes.user_action", _DELETE, "missing_field", "outcomes.user_action"),
    ("action.W_TRAIT", _DELETE, "missing_field", "action.W_TRAIT"),
    ("state.user_features.hesitation_count", "two", "wrong_type", "state.user_features.hesitation_count"),
    ("state.user_features.brand_affinity", [0.3], "wrong_type", "state.user_features.brand_affinity"),
    ("action.W_BRAND", True, "wrong_type", "action.W_BRAND"),
    ("ranking", "prod_1", "wrong_type", "ranking"),
    ("created_at", "yesterday", "wrong_type", "created_at"),
    ("outcomes.purchased_ranks", ["2"], "wrong_type", "outcomes.purchased_ranks[0]"),
    ("action.W_TRAIT", -0.1, "out_of_range", "action.W_TRAIT"),
    ("propensity", 0.0, "out_of_range", "propensity"),
    ("outcomes.user_action", "bought", "unknown_user_action", "outcomes.user_action"),
    ("outcomes.purchased_ranks", [5], "rank_out_of_range", "outcomes.purchased_ranks[0]"),
    ("outcomes.purchased_ranks", [0], "rank_out_of_range", "outcomes.purchased_ranks[0]"),
]


@pytest.mark.parametrize(("path", "value", "reason", "field"), CASES)
def test_invalid_event_names_field_and_log_id(path: str, value: object, reason: str, field: str) -> None:
    raw = orjson.dumps(_mutate(path, value))
    with pytest.raises(InvalidEvent) as ei:
        parse_event(raw)
    e = ei.value
    assert e.reason == reason
    assert e.field == field
    assert f"'{field}'" in str(e)
    if path != "log_id":
        assert e.log_id == "log-0001"
        assert "log-0001" in str(e)


def test_all_zero_action_is_invalid() -> None:
    ev = original_example_event(action={k: 0.0 for k in original_example_event()["action"]})
    with pytest.raises(InvalidEvent, match="all seven weights are zero") as ei:
        parse_event(orjson.dumps(ev))
    assert ei.value.reason == "out_of_range"


def test_not_json() -> None:
    with pytest.raises(InvalidEvent) as ei:
        parse_event(b'{"log_id": "x", ')
    assert ei.value.reason == "not_json"
    with pytest.raises(InvalidEvent) as ei:
        parse_event(b"[1, 2]")
    assert ei.value.reason == "wrong_type"


def test_nan_and_inf() -> None:
    # NaN is not JSON at all; an overflowing literal is a non-finite number; a dict can carry a real NaN.
    raw = orjson.dumps(original_example_event()).replace(b'"luxury_affinity":0.7', b'"luxury_affinity":NaN')
    with pytest.raises(InvalidEvent) as ei:
        parse_event(raw)
    assert ei.value.reason == "not_json"
    raw = orjson.dumps(original_example_event()).replace(b'"price_mean":120.5', b'"price_mean":1e999')
    with pytest.raises(InvalidEvent) as ei:
        parse_event(raw)
    assert (ei.value.reason, ei.value.field) == ("not_finite", "state.candidate_features.price_mean")
    with pytest.raises(InvalidEvent) as ei:
        parse_event(_mutate("state.user_features.luxury_affinity", float("nan")))
    assert (ei.value.reason, ei.value.field) == ("not_finite", "state.user_features.luxury_affinity")
    with pytest.raises(InvalidEvent) as ei:
        parse_event(_mutate("reward", float("inf")))
    assert (ei.value.reason, ei.value.field) == ("not_finite", "reward")


# ------------------------------------------------------------------------------------ impossible values (issue 14)
IMPOSSIBLE = [
    # (mutation path, value, reason, field): finite in JSON, impossible as data
    ("state.candidate_features.price_mean", 1e39, "out_of_range", "state.candidate_features.price_mean"),
    ("state.user_features.luxury_affinity", 7.0, "out_of_range", "state.user_features.luxury_affinity"),
    ("state.user_features.purchase_count", -1, "out_of_range", "state.user_features.purchase_count"),
    ("state.user_features.brand_affinity", {"chanel": 3.0}, "out_of_range", "state.user_features.brand_affinity"),
    ("state.candidate_features.price_min", 500.0, "inconsistent", "state.candidate_features.price_min"),
    ("outcomes.purchased_total_value", 1e300, "out_of_range", "outcomes.purchased_total_value"),
    ("log_propensity", 1e300, "out_of_range", "log_propensity"),
    ("log_propensity", -1e300, "out_of_range", "log_propensity"),
    ("propensity", 99.0, "inconsistent", "propensity"),
    ("reward", 1e300, "out_of_range", "reward"),
    ("created_at", "9999-12-31T00:00:00Z", "out_of_range", "created_at"),
    ("created_at", "0001-01-01T00:00:00Z", "out_of_range", "created_at"),
    ("created_at", 1_795_946_400_000, "out_of_range", "created_at"),  # milliseconds given as seconds
    ("outcomes.purchased_ranks", [1, 1, 1], "inconsistent", "outcomes.purchased_ranks"),
    ("ranking", [f"p{i}" for i in range(40_000)], "out_of_range", "ranking"),
]


@pytest.mark.parametrize(("path", "value", "reason", "field"), IMPOSSIBLE)
def test_impossible_values_are_rejected_with_their_field(path: str, value: object, reason: str, field: str) -> None:
    ev = _mutate(path, value)
    if path == "state.candidate_features.price_min":
        ev["state"]["candidate_features"]["price_max"] = 100.0
    if path == "propensity":
        ev["log_propensity"] = 1.0
    with pytest.raises(InvalidEvent) as ei:
        parse_event(orjson.dumps(ev))
    assert (ei.value.reason, ei.value.field.split("[")[0]) == (reason, field), str(ei.value)
    assert ei.value.log_id == "log-0001"


@pytest.mark.parametrize(
    ("action", "outcomes", "field"),
    [
        ("none", {"purchased_ranks": [1]}, "outcomes.purchased_ranks"),
        ("none", {"interacted_ranks": [1]}, "outcomes.interacted_ranks"),
        ("click", {"purchased_total_value": 199.0}, "outcomes.purchased_total_value"),
        ("cart", {"purchased_ranks": [2]}, "outcomes.purchased_ranks"),
    ],
)
def test_contradictory_outcomes_are_inconsistent(action: str, outcomes: dict, field: str) -> None:
    ev = original_example_event()
    ev["outcomes"] = {"user_action": action, "purchased_ranks": [], "purchased_total_value": 0.0, **outcomes}
    with pytest.raises(InvalidEvent) as ei:
        parse_event(orjson.dumps(ev))
    assert (ei.value.reason, ei.value.field) == ("inconsistent", field)


def test_deep_nesting_even_in_an_unknown_field_is_a_dead_letter_not_a_crash() -> None:
    raw = orjson.dumps(original_example_event(x="DEEP")).replace(b'"DEEP"', b"[" * 1000 + b"]" * 1000)
    with pytest.raises(InvalidEvent) as ei:
        parse_event(raw)
    assert ei.value.reason == "too_deep"


def test_tolerated_forms_are_stored_as_documented() -> None:
    ev = original_example_event()
    assert parse_event(b"\xef\xbb\xbf" + orjson.dumps(ev)).log_id == "log-0001"  # a byte-order mark
    ev["action"] = {k: 1e308 for k in ev["action"]}  # huge but equal weights: only ratios matter
    assert parse_event(orjson.dumps(ev)).action.W_BRAND == 1e308
    dup = orjson.dumps(original_example_event())[:-1] + b',"session_id":"last"}'  # duplicate key: the last one wins
    assert parse_event(dup).session_id == "last"


def test_created_at_is_bounded_by_the_clock_it_is_given() -> None:
    raw = orjson.dumps(original_example_event(created_at="2026-11-29T10:00:00Z"))
    assert parse_event(raw, now=1_795_946_400.0).log_id == "log-0001"
    with pytest.raises(InvalidEvent) as ei:
        parse_event(raw, now=1_795_946_400.0 - 7200)
    assert ei.value.field == "created_at"
