"""Properties of validation (hypothesis): for any bytes and any mutation of a valid event, `parse_event` raises only
`InvalidEvent`, and whatever it accepts encodes into a buffer row of finite values."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.reward import RewardConfig
from common.schema import InvalidEvent, parse_event
from streamer.encode import encode
from tests.helpers import original_example_event

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


BASE = original_example_event()
PATHS = _paths(BASE)


def _accepts_or_rejects_cleanly(raw: bytes) -> None:
    try:
        parse_event(raw)
    except InvalidEvent:
        return
    batch = encode([raw], RewardConfig())
    assert not batch.errors or batch.errors[0][1] == "not_finite"
    for name, col in batch.columns.items():
        if col.dtype.kind == "f" and name != "log_propensity":
            assert np.isfinite(col).all(), name
    assert np.isfinite(batch.columns["log_propensity"]).all() or np.isnan(batch.columns["log_propensity"]).all()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_invalid_event(raw: bytes) -> None:
    _accepts_or_rejects_cleanly(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), JSON_VALUES, st.booleans())
def test_mutated_events_are_rejected_or_stored_finite(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    ev = copy.deepcopy(BASE)
    node = ev
    for p in path[:-1]:
        node = node[p]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    _accepts_or_rejects_cleanly(json.dumps(ev).encode())  # json: integers past 64 bits too


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=len(orjson.dumps(BASE)) - 1), st.binary(min_size=1, max_size=8))
def test_spliced_bytes_are_rejected_or_stored_finite(at: int, junk: bytes) -> None:
    raw = orjson.dumps(BASE)
    _accepts_or_rejects_cleanly(raw[:at] + junk + raw[at:])
