"""The search-log event: parsing and validation of one JSON record into a `SearchLogEvent`.

One event is one search: the state the policy saw, the seven weights it served (the action), the ranking
those weights produced, what the user did, and optionally the logging density of the served weights.

    {"log_id": "…", "created_at": "2026-11-29T10:00:00Z",
     "state": {"user_features": {…}, "candidate_features": {…}, "session_features": {…}},
     "action": {"W_COLLAB_POS": 0.4, …, "W_MARKET_DEAL": 0.3},
     "ranking": ["prod_1", …], "ranking_metadata": [{"product_id": "prod_1", "price": 199.0, …}, …],
     "outcomes": {"user_action": "purchase", "purchased_ranks": [3], "purchased_total_value": 199.0,
                  "interacted_ranks": [1, 3]},
     "reward": null,
     "log_propensity": 7.43, "policy_version": "v0007", "session_id": "…"}

Ranks are 1-based (rank 1 is the top). `propensity` (> 0) or `log_propensity` (its natural log; densities on
the simplex span many orders of magnitude) is the logging density of the served weights. Unknown fields are
ignored. Anything else that is wrong raises `InvalidEvent`, whose message names the field path and the log id,
and whose `reason` is a short bounded label (a metric label and the dead-letter reason).

VALIDATION — what is rejected, so that every stored row holds finite, plausible values (docs/events.md has the
full table): numbers beyond their field's range (affinities, diversity and desirability in [0, 1]; counts,
prices and spends in [0, 1e9]; |log_propensity| <= 1000; |reward| <= 1e9) are `out_of_range`, so a value finite
in JSON but beyond float32 never becomes inf in the buffer; `created_at` before 2000 or more than
`MAX_FUTURE_S` ahead of the clock is `out_of_range`; a ranking of more than 10,000 products is `out_of_range`;
a rank listed twice, a purchase recorded on a search whose action is not `purchase`, interactions on `none`,
`price_min > price_max`, and `propensity` contradicting `log_propensity` are `inconsistent`; JSON nested past
the decoder's limit is `too_deep`. Tolerated as documented: a UTF-8 byte-order mark at the start; weights of
any positive scale (only their ratios matter); duplicate keys, where the last one wins as in JSON.parse and
Python's json (detecting them would cost ~6 µs an event, more than decoding it).

Speed matters (the streamer parses every record): msgspec decodes straight into typed Structs and checks
types, required fields and weight signs in one C pass (~6.5 µs for a 2.3 KB event on the 2-core dev machine,
where orjson's untyped decode alone takes 14 µs); only the cross-field checks below run in Python. The Structs
are `gc=False` (they hold no reference cycles): with a polled batch of events alive, the cyclic collector
otherwise re-traverses every one of them and parsing costs ~3x more.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

ACTION_KEYS: tuple[str, ...] = (
    "W_COLLAB_POS",
    "W_COLLAB_NEG",
    "W_TRAIT",
    "W_BRAND",
    "W_WISHLIST",
    "W_MARKET_CONV",
    "W_MARKET_DEAL",
)
UserAction = Literal["none", "click", "wishlist", "cart", "purchase"]
USER_ACTIONS: tuple[str, ...] = ("none", "click", "wishlist", "cart", "purchase")

REASONS: tuple[str, ...] = (
    "not_json",
    "missing_field",
    "wrong_type",
    "not_finite",
    "out_of_range",
    "unknown_user_action",
    "rank_out_of_range",
    "inconsistent",  # fields that contradict each other (see VALIDATION below)
    "too_deep",  # JSON nested deeper than the decoder's recursion limit
    "too_large",  # larger than streamer.max_record_bytes; not parsed
    "empty_record",  # a Kafka record without a value (a tombstone)
    "late_outcome",  # the outcome join: an outcome for a decision whose attribution window had closed
    "unknown_decision",  # the outcome join: an outcome whose decision never arrived
    "duplicate_decision",  # the outcome join: a second, different decision for a log_id already decided
    "implausible",  # an outcome beyond the plausibility limits (join.max_purchase_value, ...)
    "join_failed",  # the outcome join could not build an event from a decision (never expected; kept, not raised)
)

# Limits of what a stored row may hold. Every number that reaches a float32 buffer column is bounded here, so a
# value finite in JSON (1e39, 1e300) can never become inf in the buffer and NaN in every training cycle.
MAX_VALUE = 1e9  # counts, prices, spends, purchase values (float32 holds up to 3.4e38; no catalogue nears 1e9)
MAX_RANKING = 10_000  # ranked products per search (ranks are stored as int16)
MAX_ABS_LOG_PROPENSITY = 1_000.0  # |log density|: exp() of a ratio overflows past ~709 anyway
MAX_ABS_REWARD = 1e9
EARLIEST_EVENT_TIME = 946_684_800.0  # 2000-01-01T00:00:00Z: anything older is a unit or parsing mistake
MAX_FUTURE_S = 3_600.0  # clock skew allowed between the logging host and this one

NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]  # affinities, diversity, desirability
Amount = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_VALUE)]  # counts and money


class UserFeatures(msgspec.Struct, gc=False):
    luxury_affinity: Unit
    hesitation_count: Amount
    purchase_count: Amount
    category_diversity: Unit
    brand_affinity: dict[str, Unit]
    avg_category_spend: dict[str, Amount]


class CandidateFeatures(msgspec.Struct, gc=False):
    count: Amount
    price_mean: Amount
    price_std: Amount
    avg_desirability: Unit
    discounted_count: Amount
    # In the original pipeline's feature list but not in its JSON example: optional, derived from ranking_metadata.
    price_min: Amount | None = None
    price_max: Amount | None = None


Flag = bool | Annotated[int, msgspec.Meta(ge=0, le=1)]  # true/false, or 1/0 as some loggers write it


class SessionFeatures(msgspec.Struct, gc=False):
    query_length: Amount
    query_has_brand: Flag
    previous_searches_count: Amount
    query_has_price_terms: Flag = False


class State(msgspec.Struct, gc=False):
    user_features: UserFeatures
    candidate_features: CandidateFeatures
    session_features: SessionFeatures


class Action(msgspec.Struct, gc=False):
    W_COLLAB_POS: NonNegative
    W_COLLAB_NEG: NonNegative
    W_TRAIT: NonNegative
    W_BRAND: NonNegative
    W_WISHLIST: NonNegative
    W_MARKET_CONV: NonNegative
    W_MARKET_DEAL: NonNegative

    def weights(self) -> tuple[float, ...]:
        return (
            self.W_COLLAB_POS,
            self.W_COLLAB_NEG,
            self.W_TRAIT,
            self.W_BRAND,
            self.W_WISHLIST,
            self.W_MARKET_CONV,
            self.W_MARKET_DEAL,
        )


class RankedItem(msgspec.Struct, gc=False):
    product_id: str | None = None
    price: Amount | None = None
    category: str | None = None


class Outcomes(msgspec.Struct, gc=False):
    user_action: UserAction
    purchased_ranks: list[int] = []
    purchased_total_value: Amount = 0.0
    interacted_ranks: list[int] | None = None


class SearchLogEvent(msgspec.Struct, gc=False):
    """One validated search."""

    log_id: str
    created_at: str | float
    state: State
    action: Action
    ranking: Annotated[list[str], msgspec.Meta(max_length=MAX_RANKING)]
    outcomes: Outcomes
    ranking_metadata: Annotated[list[RankedItem], msgspec.Meta(max_length=MAX_RANKING)] = []
    reward: Annotated[float, msgspec.Meta(ge=-MAX_ABS_REWARD, le=MAX_ABS_REWARD)] | None = None
    propensity: Annotated[float, msgspec.Meta(gt=0.0)] | None = None
    log_propensity: Annotated[float, msgspec.Meta(ge=-MAX_ABS_LOG_PROPENSITY, le=MAX_ABS_LOG_PROPENSITY)] | None = None
    policy_version: str | None = None
    session_id: str | None = None

    @property
    def event_time(self) -> float:
        """Event time in seconds since the epoch (UTC; a naive timestamp is taken as UTC)."""
        return _timestamp(self.created_at)

    @property
    def logging_log_density(self) -> float | None:
        """Natural log of the logging density of the served action, or None when the event carries none."""
        if self.log_propensity is not None:
            return self.log_propensity
        if self.propensity is not None:
            return math.log(self.propensity)
        return None

    @property
    def converted(self) -> bool:
        return self.outcomes.user_action == "purchase"


class InvalidEvent(ValueError):
    """A record that is not a valid search-log event; `field` is the path, `reason` one of REASONS."""

    def __init__(self, reason: str, field: str, detail: str, log_id: str | None = None) -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        self.log_id = log_id
        where = f"log_id={log_id!r}" if log_id is not None else "log_id unknown"
        super().__init__(f"invalid event ({where}): field '{field}': {detail}")


_DECODER = msgspec.json.Decoder(SearchLogEvent)
_RAW_DECODER = msgspec.json.Decoder()
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")
_BOM = b"\xef\xbb\xbf"


def _timestamp(v: str | float) -> float:
    if isinstance(v, str):
        dt = datetime.fromisoformat(v)
        return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()
    return float(v)


def _log_id_of(raw: Any) -> str | None:
    """Best-effort log id of a record that failed validation (only on the error path)."""
    try:
        doc = raw if isinstance(raw, dict) else _RAW_DECODER.decode(raw)
    except (msgspec.DecodeError, TypeError, ValueError, RecursionError):
        return None
    lid = doc.get("log_id") if isinstance(doc, dict) else None
    return lid if isinstance(lid, str) else None


def _value_at(doc: Any, path: str) -> Any:
    """The value at a msgspec error path (`a.b[3].c`) of a dict, or None (only on the error path)."""
    for name, index in _STEP.findall(path):
        try:
            doc = doc[int(index)] if index else doc[name]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def from_validation_error(e: msgspec.ValidationError, raw: Any) -> InvalidEvent:
    msg = str(e)
    m = _PATH.search(msg)
    path = m.group("path").lstrip(".") if m else ""
    head = msg[: m.start()] if m else msg
    log_id = _log_id_of(raw)
    mm = _MISSING.match(head)
    if mm:
        field = f"{path}.{mm.group('field')}" if path else mm.group("field")
        return InvalidEvent("missing_field", field, "required field is missing", log_id)
    field = path or "$"
    if field == "outcomes.user_action":
        return InvalidEvent("unknown_user_action", field, f"{head}; expected one of {list(USER_ACTIONS)}", log_id)
    if head.startswith("Number out of range"):
        return InvalidEvent("not_finite", field, "number overflows a float (must be finite)", log_id)
    if head.startswith("Expected") and ("<" in head or ">" in head):
        if isinstance(raw, dict):  # a dict built in Python can hold NaN or inf, which fail every bound
            v = _value_at(raw, path)
            if isinstance(v, float) and not math.isfinite(v):
                return InvalidEvent("not_finite", field, f"must be finite, got {v}", log_id)
        return InvalidEvent("out_of_range", field, head, log_id)
    return InvalidEvent("wrong_type", field, head, log_id)


def _check_ranks(ranks: list[int], field: str, n: int, log_id: str) -> None:
    if min(ranks) >= 1 and max(ranks) <= n:
        if len(ranks) > 1 and len(set(ranks)) != len(ranks):
            raise InvalidEvent("inconsistent", field, f"a rank is listed twice in {ranks[:20]}", log_id)
        return
    for i, r in enumerate(ranks):
        if r < 1 or r > n:
            raise InvalidEvent(
                "rank_out_of_range",
                f"{field}[{i}]",
                f"rank {r} is outside the ranking (1..{n}; 1-based)",
                log_id,
            )


def check_outcomes(out: Outcomes, n: int, log_id: str) -> None:
    """Ranks inside the ranking and listed once; no purchase evidence on a search whose deepest action is not a
    purchase, and no interaction at all on one with `none`."""
    if out.purchased_ranks:
        _check_ranks(out.purchased_ranks, "outcomes.purchased_ranks", n, log_id)
    if out.interacted_ranks:
        _check_ranks(out.interacted_ranks, "outcomes.interacted_ranks", n, log_id)
    action = out.user_action
    if action == "purchase":
        return
    if out.purchased_ranks or out.purchased_total_value > 0.0:
        field = "outcomes.purchased_ranks" if out.purchased_ranks else "outcomes.purchased_total_value"
        raise InvalidEvent("inconsistent", field, f"a purchase is recorded but user_action is {action!r}", log_id)
    if action == "none" and out.interacted_ranks:
        raise InvalidEvent(
            "inconsistent", "outcomes.interacted_ranks", "interactions are recorded but user_action is 'none'", log_id
        )


def check_decided(state: State, action: Action, log_id: str) -> None:
    """What a decision must be besides its fields' bounds: weights not all zero, price_min <= price_max (shared by
    the event and the decision, common/decisions.py)."""
    if max(action.weights()) <= 0.0:
        raise InvalidEvent("out_of_range", "action", "all seven weights are zero: the ranking is undefined", log_id)
    c = state.candidate_features
    if c.price_min is not None and c.price_max is not None and c.price_min > c.price_max:
        raise InvalidEvent(
            "inconsistent",
            "state.candidate_features.price_min",
            f"price_min {c.price_min} is above price_max {c.price_max}",
            log_id,
        )


def check_time(created_at: str | float, log_id: str, now: float, max_future_s: float = MAX_FUTURE_S) -> float:
    """`created_at` in seconds since the epoch, or InvalidEvent when unparseable, before 2000 or in the future."""
    try:
        t = _timestamp(created_at)
    except (ValueError, OverflowError, OSError):
        raise InvalidEvent("wrong_type", "created_at", f"not an ISO-8601 timestamp: {created_at!r}", log_id) from None
    if not EARLIEST_EVENT_TIME <= t <= now + max_future_s:
        hint = " (milliseconds given as seconds?)" if t > 1e11 and not isinstance(created_at, str) else ""
        raise InvalidEvent(
            "out_of_range",
            "created_at",
            f"{created_at!r} is before 2000-01-01 or more than {max_future_s:.0f}s in the future{hint}",
            log_id,
        )
    return t


_isfinite = math.isfinite


def _check_finite(ev: SearchLogEvent) -> None:
    st = ev.state
    u, c, s = st.user_features, st.candidate_features, st.session_features
    groups: tuple[tuple[str, Any, tuple[str, ...]], ...] = (
        (
            "state.user_features",
            u,
            ("luxury_affinity", "hesitation_count", "purchase_count", "category_diversity"),
        ),
        (
            "state.candidate_features",
            c,
            (
                "count",
                "price_mean",
                "price_std",
                "avg_desirability",
                "discounted_count",
                "price_min",
                "price_max",
            ),
        ),
        ("state.session_features", s, ("query_length", "previous_searches_count")),
        ("action", ev.action, ACTION_KEYS),
        ("outcomes", ev.outcomes, ("purchased_total_value",)),
        ("", ev, ("reward", "propensity", "log_propensity")),
    )
    for path, obj, names in groups:
        for name in names:
            v = getattr(obj, name)
            if v is not None and not _isfinite(v):
                field = f"{path}.{name}" if path else name
                raise InvalidEvent("not_finite", field, f"must be finite, got {v}", ev.log_id)
    for path, mapping in (
        ("state.user_features.brand_affinity", u.brand_affinity),
        ("state.user_features.avg_category_spend", u.avg_category_spend),
    ):
        for k, v in mapping.items():
            if not _isfinite(v):
                raise InvalidEvent("not_finite", f"{path}.{k}", f"must be finite, got {v}", ev.log_id)
    for i, item in enumerate(ev.ranking_metadata):
        if item.price is not None and not _isfinite(item.price):
            raise InvalidEvent(
                "not_finite", f"ranking_metadata[{i}].price", f"must be finite, got {item.price}", ev.log_id
            )


def decoded(decode: Callable[[Any], Any], raw: Any) -> Any:
    """`decode(raw)` with msgspec's errors as InvalidEvent: the field path, the log id and a bounded reason. Every
    message type (events here, decisions and outcomes in common/decisions.py) is decoded through it."""
    try:
        return decode(raw)
    except msgspec.ValidationError as e:
        raise from_validation_error(e, raw) from None
    except msgspec.DecodeError as e:
        raise InvalidEvent("not_json", "$", f"not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidEvent("too_deep", "$", "JSON nested too deeply to decode") from None
    except TypeError as e:  # None or another non-bytes value (a Kafka tombstone is caught before this)
        raise InvalidEvent("wrong_type", "$", f"not a JSON document: {e}") from None


def parse_event(
    raw: bytes | bytearray | memoryview | str | dict[str, Any],
    now: float | None = None,
    max_future_s: float = MAX_FUTURE_S,
) -> SearchLogEvent:
    """Decode and validate one event; raise `InvalidEvent` naming the field and the log id on any problem.

    `now` (default: the wall clock) bounds `created_at` from above, with `max_future_s` of clock skew.
    """
    from_dict = isinstance(raw, dict)
    if isinstance(raw, bytes | bytearray | memoryview):
        if raw[:3] == _BOM:  # tolerated at the start (RFC 8259 §8.1: parsers MAY ignore it), as Windows tools write it
            raw = raw[3:]
    elif isinstance(raw, str) and raw[:1] == "\ufeff":
        raw = raw[1:]
    ev: SearchLogEvent = (
        decoded(lambda r: msgspec.convert(r, SearchLogEvent), raw) if from_dict else decoded(_DECODER.decode, raw)
    )
    log_id = ev.log_id
    if not log_id:
        raise InvalidEvent("wrong_type", "log_id", "must be a non-empty string")
    check_time(ev.created_at, log_id, time.time() if now is None else now, max_future_s)
    if from_dict:
        # JSON text cannot carry NaN or inf through msgspec (NaN is malformed, 1e999 is out of range);
        # a dict built in Python can.
        _check_finite(ev)
    check_decided(ev.state, ev.action, log_id)
    check_outcomes(ev.outcomes, len(ev.ranking), log_id)
    if ev.propensity is not None and ev.log_propensity is not None:
        lp = math.log(ev.propensity)
        if abs(lp - ev.log_propensity) > 1e-6 * max(1.0, abs(lp)):
            raise InvalidEvent(
                "inconsistent",
                "propensity",
                f"log(propensity) = {lp:.6g} contradicts log_propensity = {ev.log_propensity:.6g}",
                log_id,
            )
    return ev
