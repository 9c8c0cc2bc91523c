"""A deterministic fuzz corpus: valid simulator events mixed with malformed records, each with its expected fate.

Every malformed record is built so that its dead-letter reason is known (`Case.reason`); `None` means the record
must be stored (valid, or a tolerated form such as a byte-order mark). Kinds: truncated JSON, a wrong type at
every field path the schema knows, NaN / Infinity / 1e999 / values beyond float32, invalid UTF-8, NUL bytes,
empty records, very long strings, deep nesting, impossible values, contradictory outcomes, re-sent duplicates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from rankrl.sim import RankingWorld, simulate


@dataclass(frozen=True)
class Case:
    value: bytes | None
    reason: str | None  # the expected dead-letter reason; None: stored
    log_id: str | None = None  # of a stored record
    kind: str = ""


# Leaves the schema knows, with a value of the wrong type for each (a string where a number goes, and so on).
WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("log_id", 123, "wrong_type"),
    ("created_at", [1], "wrong_type"),
    ("state.user_features.luxury_affinity", "high", "wrong_type"),
    ("state.user_features.hesitation_count", True, "wrong_type"),
    ("state.user_features.purchase_count", None, "wrong_type"),
    ("state.user_features.category_diversity", {}, "wrong_type"),
    ("state.user_features.brand_affinity", [], "wrong_type"),
    ("state.user_features.avg_category_spend", "x", "wrong_type"),
    ("state.candidate_features.count", "20", "wrong_type"),
    ("state.candidate_features.price_mean", [1.0], "wrong_type"),
    ("state.candidate_features.price_std", "", "wrong_type"),
    ("state.candidate_features.avg_desirability", False, "wrong_type"),
    ("state.candidate_features.discounted_count", {"a": 1}, "wrong_type"),
    ("state.candidate_features.price_min", "cheap", "wrong_type"),
    ("state.session_features.query_length", "3", "wrong_type"),
    ("state.session_features.query_has_brand", "yes", "wrong_type"),
    ("state.session_features.previous_searches_count", [], "wrong_type"),
    ("state", [], "wrong_type"),
    ("action", "weights", "wrong_type"),
    ("action.W_BRAND", "0.5", "wrong_type"),
    ("action.W_MARKET_DEAL", None, "wrong_type"),
    ("ranking", "p1,p2", "wrong_type"),
    ("ranking_metadata", {}, "wrong_type"),
    ("outcomes", None, "wrong_type"),
    ("outcomes.user_action", 4, "unknown_user_action"),
    ("outcomes.purchased_ranks", "1", "wrong_type"),
    ("outcomes.purchased_total_value", "199", "wrong_type"),
    ("reward", "high", "wrong_type"),
    ("log_propensity", "7.4", "wrong_type"),
    ("policy_version", 7, "wrong_type"),
]

IMPOSSIBLE: list[tuple[str, Any, str]] = [
    ("state.candidate_features.price_mean", 1e39, "out_of_range"),
    ("state.user_features.luxury_affinity", 7.0, "out_of_range"),
    ("state.user_features.purchase_count", -3, "out_of_range"),
    ("outcomes.purchased_total_value", 1e300, "out_of_range"),
    ("log_propensity", 1e300, "out_of_range"),
    ("log_propensity", -1e300, "out_of_range"),
    ("created_at", "9999-12-31T23:59:59Z", "out_of_range"),
    ("created_at", "0001-01-01T00:00:00Z", "out_of_range"),
    ("created_at", 1.7e12, "out_of_range"),
    ("propensity", 0.0, "out_of_range"),
    ("outcomes.user_action", "teleport", "unknown_user_action"),
]


def _set(ev: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    ev = copy.deepcopy(ev)
    *parents, last = path.split(".")
    node = ev
    for p in parents:
        node = node[p]
    node[last] = value
    return ev


def _numeric_literal(ev: dict[str, Any], literal: bytes) -> bytes:
    """The event with price_std replaced by a raw JSON literal (NaN, Infinity, 1e999 are not msgspec floats)."""
    marker = "__LITERAL__"
    return orjson.dumps(_set(ev, "state.candidate_features.price_std", marker)).replace(f'"{marker}"'.encode(), literal)


def valid_events(n: int, seed: int = 5) -> list[dict[str, Any]]:
    return [e for _, _, _, evs in simulate(RankingWorld(), n, seed=seed, interval_s=0.01) for e in evs][:n]


def corpus(n_valid: int = 2_000, n_bad: int = 10_500, seed: int = 0, kafka: bool = False) -> list[Case]:
    """`n_valid` valid events (a tenth of them re-sent once, also a BOM form) mixed with `n_bad` malformed ones.

    `kafka=True` adds records only Kafka can carry (tombstones); the file form never holds a newline inside a
    record, and has no empty records (a blank JSONL line is skipped, not a record).
    """
    rng = np.random.default_rng(seed)
    good = valid_events(n_valid)
    cases: list[Case] = [Case(orjson.dumps(e), None, e["log_id"], "valid") for e in good]
    for e in good[: n_valid // 10]:
        cases.append(Case(orjson.dumps(e), None, e["log_id"], "resent"))  # a duplicate: stored once
    for e in good[n_valid // 10 : n_valid // 10 + 20]:
        bom = copy.deepcopy(e)
        bom["log_id"] += "-bom"
        cases.append(Case(b"\xef\xbb\xbf" + orjson.dumps(bom), None, bom["log_id"], "bom"))
    bad: list[Case] = []
    i = 0
    while len(bad) < n_bad:
        base = copy.deepcopy(good[i % n_valid])
        base["log_id"] = f"bad-{i}"
        raw = orjson.dumps(base)
        kind = i % 12
        i += 1
        if kind == 0:
            bad.append(Case(raw[: int(rng.integers(1, len(raw) - 1))], "not_json", kind="truncated"))
        elif kind == 1:
            path, value, reason = WRONG_TYPES[(i // 12) % len(WRONG_TYPES)]
            bad.append(Case(orjson.dumps(_set(base, path, value)), reason, kind=f"wrong_type:{path}"))
        elif kind == 2:
            literal = (b"NaN", b"Infinity", b"-Infinity")[(i // 12) % 3]
            bad.append(Case(_numeric_literal(base, literal), "not_json", kind="nan_literal"))
        elif kind == 3:
            bad.append(Case(_numeric_literal(base, b"1e999"), "not_finite", kind="huge_literal"))
        elif kind == 4:
            path, value, reason = IMPOSSIBLE[(i // 12) % len(IMPOSSIBLE)]
            bad.append(Case(orjson.dumps(_set(base, path, value)), reason, kind=f"impossible:{path}"))
        elif kind == 5:
            bad.append(Case(raw.replace(b'"bad-', b'"bad\xff\xfe-', 1), "not_json", kind="invalid_utf8"))
        elif kind == 6:
            at = int(rng.integers(1, len(raw) - 1))
            bad.append(Case(raw[:at] + b"\x00" + raw[at:], "not_json", kind="nul_byte"))
        elif kind == 7:
            base["outcomes"] = {"user_action": "none", "purchased_ranks": [1], "purchased_total_value": 0.0}
            bad.append(Case(orjson.dumps(base), "inconsistent", kind="contradictory_outcome"))
        elif kind == 8:
            base["outcomes"] = {"user_action": "click", "interacted_ranks": [1] * 10_000}
            bad.append(Case(orjson.dumps(base), "inconsistent", kind="duplicate_ranks"))
        elif kind == 9:
            deep = orjson.dumps({**base, "x": "__DEEP__"}).replace(b'"__DEEP__"', b"[" * 1000 + b"]" * 1000)
            bad.append(Case(deep, "too_deep", kind="deep_nesting"))
        elif kind == 10:
            base["ranking"] = [f"p{j}" for j in range(40_000)]
            base["outcomes"] = {"user_action": "purchase", "purchased_ranks": [32_768]}
            bad.append(Case(orjson.dumps(base), "out_of_range", kind="rank_32768"))
        else:
            bad.append(Case(orjson.dumps({**base, "log_id": "x" * 100_000, "state": 1}), "wrong_type", kind="long"))
    if kafka:
        bad.extend(Case(None, "empty_record", kind="tombstone") for _ in range(20))
        bad.extend(Case(b"", "not_json", kind="empty_value") for _ in range(20))
    out = cases + bad
    order = rng.permutation(len(out))
    return [out[j] for j in order]


def oversized(n: int, size: int, reason: str) -> Iterator[Case]:
    """Records of `size` bytes that are not valid events (an unterminated string): `too_large` past
    streamer.max_record_bytes, `not_json` below it."""
    for j in range(n):
        head = f'{{"log_id": "huge-{j}", "pad": "'.encode()
        yield Case(head + b"z" * (size - len(head)), reason, kind=f"oversized:{size}")
