"""The decision service's messages: a rank request, the decision it logs, and the outcome reported later.

    search engine ──POST /v1/rank {state, ranking_metadata?, session_id?, log_id?}──► rankrl serve
                  ◄── {log_id, weights, log_propensity, policy_version} ── and a Decision on "search-decisions"
    later:        ──POST /v1/outcome {log_id, ranking, ranking_metadata?, outcomes}──► an Outcome on "search-outcomes"

A **decision** is a search-log event without `ranking` and `outcomes`: what was known when the weights were
chosen, the weights served and their log-density. An **outcome** is the `log_id` with what the user saw and did.
The streamer's join (streamer/join.py) puts the two back together into the event of common/schema.py. The JSON
Schemas in docs/schemas/ are generated from these types (`python scripts/contract.py`).

ONE VALIDATION. `rankrl serve` and the join run the same functions here (`parse_decision`, `parse_outcome`, with
the same `Limits`), so whatever serve acknowledges the join stores, and whatever it would refuse serve refuses
first (docs/serving-contract.md, "What is validated where"). Errors name the field and the log id, with the
event's reasons (docs/events.md).

THE STATE IS FROZEN AT DECISION TIME. A decision carries the complete state the policy saw: `price_min` and
`price_max`, when the rank request lacks them, are filled from the rank request's candidates (`freeze_state`)
before the decision is logged. An outcome's `ranking_metadata` (what was shown) prices the purchases and nothing
else: it never changes the stored state.

RETRACTIONS. A decision or outcome that serve refused (503) after handing it to its log may still become durable
(a Kafka send that completes after the timeout, a write the disk finished late). Serve then logs a `Retraction`
naming it, behind it on the same key; the join drops what it names, so a refused request leaves nothing stored.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from common.schema import (
    MAX_ABS_LOG_PROPENSITY,
    MAX_FUTURE_S,
    MAX_RANKING,
    MAX_VALUE,
    Action,
    InvalidEvent,
    Outcomes,
    RankedItem,
    SearchLogEvent,
    State,
    check_decided,
    check_outcomes,
    check_time,
    decoded,
)

MAX_BATCH = 1000  # searches in one /v1/rank/batch call
LogId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Limits(msgspec.Struct, frozen=True):
    """What one record may be, shared by serve and the join (the [join] section sets them; both must agree).

    The plausibility limits bound the influence of one report on the reward: the number of purchased and
    interacted ranks and the purchase value of one search (after its reports are merged)."""

    max_record_bytes: int = 1 << 20
    max_purchase_value: float = 100_000.0
    max_purchased_ranks: int = 20
    max_interacted_ranks: int = 100
    max_future_s: float = MAX_FUTURE_S


DEFAULT_LIMITS = Limits()


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
    mean: dict[str, float]  # ACTION_KEYS -> the policy's mean weights (what policy.onnx computes for this state)


class RankBatchResponse(msgspec.Struct, gc=False):
    results: list[RankResponse]  # in the order of the requests


class OutcomeAccepted(msgspec.Struct, gc=False):
    """202: the outcome is durable."""

    log_id: str
    status: Literal["accepted"]
    outcome_id: str  # the caller's, or one made up: a retraction or a support request names it


class ErrorBody(msgspec.Struct, gc=False, omit_defaults=True):
    """Every 4xx/5xx body of /v1: `error` is a bounded label (invalid_request, log_unavailable, conflict,
    in_progress, unauthenticated, forbidden, media_type, too_large, read_timeout); 400s add the validation's
    `reason`, `field` and `log_id`."""

    error: str
    detail: str
    reason: str | None = None
    field: str | None = None
    log_id: str | None = None


class Readiness(msgspec.Struct, gc=False):
    """GET /readyz: 200 with status ready or degraded (serving, with warnings), 503 not_ready with problems."""

    status: Literal["ready", "degraded", "not_ready"]
    policy_version: str | None
    problems: list[str]
    warnings: list[str]


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


# RFC 3339 with a zone: a time stamp without one means a different instant on every host
ZonedTime = Annotated[
    str, msgspec.Meta(pattern=r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,9})?)?([Zz]|[+-]\d\d:?\d\d)$")
]


class Outcome(msgspec.Struct, gc=False, omit_defaults=True):
    """What the user saw and did after one search (topic search-outcomes); several may arrive for one log_id."""

    log_id: LogId
    ranking: Annotated[list[str], msgspec.Meta(max_length=MAX_RANKING)]
    outcomes: Outcomes
    ranking_metadata: Annotated[list[RankedItem], msgspec.Meta(max_length=MAX_RANKING)] = []
    created_at: ZonedTime | float | None = None  # when it happened (seconds, or RFC 3339 with a zone); else receipt
    outcome_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None  # serve's id of this report


class Retraction(msgspec.Struct, gc=False, omit_defaults=True):
    """Withdraws a decision (matched by log_id and log_propensity) or an outcome (by log_id and outcome_id) that
    was refused after it was handed to its log. Logged to the same log, with the same key, after what it names."""

    retract: LogId  # the log_id
    created_at: str
    log_propensity: float | None = None  # a decision's: which decision of this log_id
    outcome_id: str | None = None  # an outcome's: which report
    reason: str = ""


_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (RankRequest, RankBatch, Decision, Outcome, Retraction)
}
_ENCODER = msgspec.json.Encoder()


def decode(raw: bytes, kind: type[Any]) -> Any:
    """Decode and type-check one message of `kind`; raise InvalidEvent naming the field (and log id) when wrong."""
    return decoded(_DECODERS[kind].decode, raw)


def check_size(raw: bytes, limits: Limits, log_id: str | None = None) -> None:
    """A record larger than `max_record_bytes` is refused by serve and dead-lettered by the streamer."""
    if len(raw) > limits.max_record_bytes:
        raise InvalidEvent(
            "too_large", "$", f"record of {len(raw)} bytes (limit max_record_bytes {limits.max_record_bytes})", log_id
        )


def check_plausible(o: Outcomes, log_id: str, limits: Limits) -> None:
    """The plausibility limits: one search's report cannot claim more than this (reason `implausible`)."""
    checks = (
        ("outcomes.purchased_total_value", o.purchased_total_value, limits.max_purchase_value),
        ("outcomes.purchased_ranks", len(o.purchased_ranks), limits.max_purchased_ranks),
        ("outcomes.interacted_ranks", len(o.interacted_ranks or ()), limits.max_interacted_ranks),
    )
    for field_, value, limit in checks:
        if value > limit:
            raise InvalidEvent("implausible", field_, f"{value:g} is over the plausibility limit {limit:g}", log_id)


def parse_outcome(raw: bytes, now: float | None = None, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """An outcome, validated as the event's outcomes are (ranks inside the ranking, no purchase on a click...),
    within the size and plausibility limits."""
    return read_outcome(raw, now, limits)[0]


def read_outcome(raw: bytes, now: float | None = None, limits: Limits = DEFAULT_LIMITS) -> tuple[Outcome, float | None]:
    """`parse_outcome` and the outcome's event time (None when it carries none)."""
    check_size(raw, limits)
    out: Outcome = decode(raw, Outcome)
    check_outcomes(out.outcomes, len(out.ranking), out.log_id)
    check_plausible(out.outcomes, out.log_id, limits)
    if out.created_at is None:
        return out, None
    return out, check_time(out.created_at, out.log_id, time.time() if now is None else now, limits.max_future_s)


def parse_decision(raw: bytes, now: float | None = None, limits: Limits = DEFAULT_LIMITS) -> Decision:
    """A decision, validated as the event it will become: serve runs this on every decision before logging it."""
    return read_decision(raw, now, limits)[0]


def read_decision(raw: bytes, now: float | None = None, limits: Limits = DEFAULT_LIMITS) -> tuple[Decision, float]:
    """`parse_decision` and the decision's event time."""
    check_size(raw, limits)
    d: Decision = decode(raw, Decision)
    t = check_time(d.created_at, d.log_id, time.time() if now is None else now, limits.max_future_s)
    check_decided(d.state, d.action, d.log_id)
    return d, t


def parse_retraction(raw: bytes) -> Retraction | None:
    """The retraction a record holds, or None when it is not one (only tried on records that are not a decision
    or an outcome, so the common path pays nothing)."""
    try:
        r: Retraction = decode(raw, Retraction)
        return r
    except InvalidEvent:
        return None


def freeze_state(state: State, metadata: list[RankedItem]) -> State:
    """The state with `price_min`/`price_max` filled from the candidates' prices when it lacks them (then from
    `price_mean`): the complete state the policy saw, which the decision logs and the buffer stores."""
    c = state.candidate_features
    if c.price_min is not None and c.price_max is not None:
        return state
    prices = [m.price for m in metadata if m.price is not None]
    lo = c.price_min if c.price_min is not None else (min(prices) if prices else c.price_mean)
    hi = c.price_max if c.price_max is not None else (max(prices) if prices else c.price_mean)
    return msgspec.structs.replace(state, candidate_features=msgspec.structs.replace(c, price_min=lo, price_max=hi))


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
    # the merge of several plausible reports stays a storable one (each report was checked alone)
    value = min(value, MAX_VALUE)
    merged = Outcomes(o.user_action, purchased, value, interacted)
    return Outcome(deep.log_id, deep.ranking, merged, deep.ranking_metadata, deep.created_at)


def merge_all(outcomes: list[Outcome], limits: Limits = DEFAULT_LIMITS) -> Outcome | None:
    """Every report of one search as one (None without any), within the plausibility limits."""
    if not outcomes:
        return None
    m = outcomes[0]
    for o in outcomes[1:]:
        m = merge_outcomes(m, o)
    mo = m.outcomes
    capped = Outcomes(
        mo.user_action,
        mo.purchased_ranks[: limits.max_purchased_ranks],
        min(mo.purchased_total_value, limits.max_purchase_value),
        None if mo.interacted_ranks is None else mo.interacted_ranks[: limits.max_interacted_ranks],
    )
    return msgspec.structs.replace(m, outcomes=capped)


def joined_event(decision: Decision, outcome: Outcome | None) -> dict[str, Any]:
    """The search-log event of a decision and its (merged) outcome; no outcome is the default `none`. The state is
    the decision's, frozen (`freeze_state`); the outcome's `ranking_metadata` only prices the purchases."""
    state = freeze_state(decision.state, decision.ranking_metadata)
    if state is not decision.state:
        decision = msgspec.structs.replace(decision, state=state)
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


def joined_bytes(raw_decision: bytes, decision: Decision, outcome: Outcome | None) -> bytes:
    """The joined event as JSON: the logged decision's own bytes with the outcome's fields appended (JSON's last
    key wins, as the event parser documents), when the decision's state is complete (serve freezes it); else
    built from `joined_event`. Saves re-encoding every decision (~7 us of the join's main thread a search)."""
    c = decision.state.candidate_features
    body = raw_decision.rstrip()
    if c.price_min is None or c.price_max is None or not body.endswith(b"}") or body[:1] != b"{":
        return _ENCODER.encode(joined_event(decision, outcome))
    if outcome is None:
        tail = b',"ranking":[],"outcomes":{"user_action":"none"}}'
    else:
        tail = b',"ranking":' + _ENCODER.encode(outcome.ranking) + b',"outcomes":' + _ENCODER.encode(outcome.outcomes)
        if outcome.ranking_metadata:
            tail += b',"ranking_metadata":' + _ENCODER.encode(outcome.ranking_metadata)
        tail += b"}"
    return body[:-1] + tail


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas (2020-12) of every message, generated from the msgspec types: file name -> schema."""
    out = {}
    for name, tp in (
        ("event", SearchLogEvent),
        ("decision", Decision),
        ("outcome", Outcome),
        ("retraction", Retraction),
        ("rank-request", RankRequest),
        ("rank-batch-request", RankBatch),
        ("rank-response", RankResponse),
        ("rank-batch-response", RankBatchResponse),
        ("outcome-accepted", OutcomeAccepted),
        ("error", ErrorBody),
        ("readiness", Readiness),
    ):
        s = msgspec.json.schema(tp)
        s["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        s["title"] = f"rankrl {name}"
        out[f"{name}.schema.json"] = s
    return out
