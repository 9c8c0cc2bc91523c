"""The decision service's messages: a rank request, the decision it logs, and the outcome reported later.

    search engine ──POST /v1/rank {state, ranking_metadata?, session_id?, log_id?}──► rankrl serve
                  ◄── {log_id, weights, log_propensity, policy_version} ── and a Decision on "search-decisions"
    later:        ──POST /v1/outcome {log_id, ranking, ranking_metadata?, outcomes}──► an Outcome on "search-outcomes"

A **decision** is a search-log event without `ranking` and `outcomes`: what was known when the weights were
chosen, the weights served and their log-density. An **outcome** is the `log_id` with what the user saw and did.
The streamer's join (streamer/join.py) puts the two back together into the event of common/schema.py. The JSON
Schemas in docs/schemas/ are generated from these types (`python scripts/contract.py`).

Validation reuses the event's: the same field bounds, the same reasons, errors naming the field and the log id.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from common.schema import (
    MAX_ABS_LOG_PROPENSITY,
    MAX_FUTURE_S,
    MAX_RANKING,
    Action,
    InvalidEvent,
    Outcomes,
    RankedItem,
    SearchLogEvent,
    State,
    check_outcomes,
    check_time,
    decoded,
)

MAX_BATCH = 1000  # searches in one /v1/rank/batch call
LogId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RankRequest(msgspec.Struct, gc=False, forbid_unknown_fields=False):
    """One search to rank: the original pipeline's `state`, optionally the candidates and the caller's ids."""

    state: State
    ranking_metadata: Annotated[list[RankedItem], msgspec.Meta(max_length=MAX_RANKING)] = []
    session_id: str | None = None
    log_id: LogId | None = None  # the caller's id for this search; one is made up when absent


class RankBatch(msgspec.Struct, gc=False):
    requests: Annotated[list[RankRequest], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class RankResponse(msgspec.Struct, gc=False):
    log_id: str
    weights: dict[str, float]  # ACTION_KEYS -> served weight; they sum to 1
    log_propensity: float  # natural log of the density of these weights; log it with the search
    policy_version: str  # the registry version, or "default" (serve.default_weights) before any champion


class Decision(msgspec.Struct, gc=False, omit_defaults=True):
    """What was decided for one search, logged before the response (topic search-decisions)."""

    log_id: LogId
    created_at: str | float
    state: State
    action: Action
    log_propensity: Annotated[float, msgspec.Meta(ge=-MAX_ABS_LOG_PROPENSITY, le=MAX_ABS_LOG_PROPENSITY)]
    policy_version: str
    ranking_metadata: Annotated[list[RankedItem], msgspec.Meta(max_length=MAX_RANKING)] = []
    session_id: str | None = None


class Outcome(msgspec.Struct, gc=False, omit_defaults=True):
    """What the user saw and did after one search (topic search-outcomes); several may arrive for one log_id."""

    log_id: LogId
    ranking: Annotated[list[str], msgspec.Meta(max_length=MAX_RANKING)]
    outcomes: Outcomes
    ranking_metadata: Annotated[list[RankedItem], msgspec.Meta(max_length=MAX_RANKING)] = []
    created_at: str | float | None = None  # when it happened; the service stamps the time it was reported


_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (RankRequest, RankBatch, Decision, Outcome)
}
_ENCODER = msgspec.json.Encoder()


def decode(raw: bytes, kind: type[Any]) -> Any:
    """Decode and type-check one message of `kind`; raise InvalidEvent naming the field (and log id) when wrong."""
    return decoded(_DECODERS[kind].decode, raw)


def parse_outcome(raw: bytes, now: float | None = None, max_future_s: float = MAX_FUTURE_S) -> Outcome:
    """An outcome, validated as the event's outcomes are (ranks inside the ranking, no purchase on a click...)."""
    out: Outcome = decode(raw, Outcome)
    check_outcomes(out.outcomes, len(out.ranking), out.log_id)
    if out.created_at is not None:
        check_time(out.created_at, out.log_id, time.time() if now is None else now, max_future_s)
    return out


def parse_decision(raw: bytes, now: float | None = None, max_future_s: float = MAX_FUTURE_S) -> Decision:
    d: Decision = decode(raw, Decision)
    check_time(d.created_at, d.log_id, time.time() if now is None else now, max_future_s)
    if max(d.action.weights()) <= 0.0:
        raise InvalidEvent("out_of_range", "action", "all seven weights are zero", d.log_id)
    return d


def iso_now(t: float | None = None) -> str:
    """An RFC 3339 UTC timestamp with microseconds, as decisions and stamped outcomes carry it."""
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).isoformat().replace("+00:00", "Z")


def encode(msg: msgspec.Struct) -> bytes:
    return _ENCODER.encode(msg)


FUNNEL = {"none": 0, "click": 1, "wishlist": 2, "cart": 3, "purchase": 4}


def merge_outcomes(a: Outcome, b: Outcome) -> Outcome:
    """Two outcomes of one search as one: the deepest funnel level wins (its ranking and purchases with it),
    interacted ranks are united; a purchase report that adds purchased ranks adds its value (a repeated report
    adds nothing)."""
    deep, other = (a, b) if FUNNEL[a.outcomes.user_action] >= FUNNEL[b.outcomes.user_action] else (b, a)
    o, p = deep.outcomes, other.outcomes
    interacted = sorted(set(o.interacted_ranks or ()) | set(p.interacted_ranks or ())) or None
    purchased, value = o.purchased_ranks, o.purchased_total_value
    new = set(p.purchased_ranks) - set(o.purchased_ranks)
    if p.user_action == "purchase" and o.user_action == "purchase" and deep.ranking == other.ranking and new:
        # a second purchase; a report repeated by a retry adds no rank and so no value
        purchased = sorted(set(o.purchased_ranks) | new)
        value = o.purchased_total_value + p.purchased_total_value
    if interacted is not None and len(deep.ranking) and max(interacted) > len(deep.ranking):
        interacted = [r for r in interacted if r <= len(deep.ranking)] or None  # ranks of another ranking
    merged = Outcomes(o.user_action, purchased, value, interacted)
    return Outcome(deep.log_id, deep.ranking, merged, deep.ranking_metadata, deep.created_at)


def joined_event(decision: Decision, outcome: Outcome | None) -> dict[str, Any]:
    """The search-log event of a decision and its (merged) outcome; no outcome is the default `none`."""
    ev: dict[str, Any] = msgspec.to_builtins(decision)
    if outcome is None:
        ev["ranking"] = []
        ev["outcomes"] = {"user_action": "none"}
    else:
        ev["ranking"] = outcome.ranking
        ev["outcomes"] = msgspec.to_builtins(outcome.outcomes)
        if outcome.ranking_metadata:
            ev["ranking_metadata"] = msgspec.to_builtins(outcome.ranking_metadata)
    return ev


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas (2020-12) of every message, generated from the msgspec types: file name -> schema."""
    out = {}
    for name, tp in (
        ("event", SearchLogEvent),
        ("decision", Decision),
        ("outcome", Outcome),
        ("rank-request", RankRequest),
        ("rank-batch-request", RankBatch),
        ("rank-response", RankResponse),
    ):
        s = msgspec.json.schema(tp)
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["title"] = f"rankrl {name}"
        out[f"{name}.schema.json"] = s
    return out
