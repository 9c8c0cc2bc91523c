"""The outcome join: decisions and the outcomes reported later become the search-log events the buffer stores.

    search-decisions ─┐                                   ┌─► joined event (decision + merged outcome, or "none")
                      ├─► JoinSource: open decisions by ──┤      ──► the streamer's usual path: parse, reward,
    search-outcomes ──┘   log_id, each until its window   └─► dead letters: late_outcome, unknown_decision,
                          closes on event time                 and decisions or outcomes that fail validation

A decision opens a window of `join.window_s` (the attribution window) from its `created_at`. Outcomes for its
`log_id` merge into it (the deepest funnel level wins, ranks are united: common/decisions.py). The window closes
when the watermark passes its end; the event is then emitted, with `user_action: "none"` (the default reward) when
no outcome came. The watermark is event time: the oldest of the newest times seen per partition (of both streams:
outcomes read behind their decisions hold it back), less `join.lateness_s`, so a slow partition or a restart does
not close windows early. It does not move while a partition the source owns has records to read but none has been
read from it yet: after a restart, a backlog of decisions read before their outcomes' partition would otherwise
close their windows empty. A partition with nothing new counts as having moved on by the wall-clock time since its
last read (its newest time + that elapsed time): windows still close on a quiet stream, and a backfill of old
traffic is not closed by the clock. An outcome whose decision has not been seen waits `join.lateness_s` of event
time for it (the outcome topic may run ahead), then is dead-lettered `unknown_decision`; one for a decision already
closed is `late_outcome` (up to one more window after it closed; later than that it is `unknown_decision` too, so
that the memory of closed windows stays bounded).

EXACTLY ONCE across SIGKILL. The join holds records (open decisions, their outcomes, outcomes waiting for their
decision); the position it reports for each partition is the offset of the oldest record it still holds there (or
past the last record read when it holds none). Every emitted event carries those positions, and the buffer stores
them with the rows at each seal, so a restart re-reads every held record and rebuilds the open windows. Records
after the oldest held one are read again too: a decision the buffer already holds (its log-id dedup index, which
`streamer.dedup_window_s` keeps for longer than window + lateness) is skipped, with its outcomes inside its window;
dead letters already written are suppressed by the dead-letter sink. Nothing is lost; nothing is stored twice. (An
outcome read after its window had closed by the watermark but inside it by event time, dead-lettered in the
seconds before a SIGKILL and not yet flushed, is then taken as joined: its dead letter is the one thing at risk.)

WHAT CLIENTS CANNOT MOVE. Event times come from clients; the join bounds them by its own clock: a time ahead of
the clock counts as now, both for the watermark and for attribution, so one future-dated record (a search engine
whose clock runs ahead, or a hostile one) can neither close the open windows early nor extend a window. Waiting
outcomes are bounded in number (`max_waiting`, the oldest dead-lettered first) and each waits at most
`lateness_s` past the clock, so unknown ids neither grow memory nor hold a partition's stored position back long.

ONE LOG_ID, ONE DECISION. A decision delivered twice (the same weights and density) counts once. Another decision
for a log_id already decided (two serve instances, a client that reuses ids) is dead-lettered
`duplicate_decision`; it is held beside the first until that one closes, so if the first is retracted, the second
(an acknowledged retry) is the one stored.

RETRACTIONS (common/decisions.py). A retraction removes the decision or the outcome it names from the join; the
outcomes of a retracted decision wait for a retried decision of the same log_id (else they end as
`unknown_decision`). A retraction that comes after its decision's window closed is counted (`too_late`) and logged.

THE JOIN NEVER RAISES on a record: whatever cannot become an event is a dead letter with its reason.

Kafka: one consumer reads both topics. Keyed by log_id with the same partition count, a search's decision and
outcomes share a partition number, and the range assignor gives partition i of both topics to one member.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.decisions import (
    DEFAULT_LIMITS,
    Decision,
    Limits,
    Outcome,
    Retraction,
    joined_bytes,
    merge_all,
    parse_retraction,
    read_decision,
    read_outcome,
)
from common.schema import InvalidEvent, _timestamp
from streamer.metrics import StreamerMetrics
from streamer.sources.base import Record, Source

log = logging.getLogger(__name__)

_dumps = orjson.dumps


@dataclass
class _Open:
    """A decision whose window is open, with the outcomes merged so far and every record it holds."""

    decision: Decision
    record: Record
    start: float  # event time of the decision
    outcomes: list[tuple[Outcome, Record]] = field(default_factory=list)
    shadows: list[tuple[Decision, Record]] = field(default_factory=list)  # other decisions for this log_id

    @property
    def outcome_records(self) -> list[Record]:
        return [r for _, r in self.outcomes]


@dataclass
class _Waiting:
    """An outcome whose decision has not been seen yet."""

    outcome: Outcome
    record: Record
    time: float


DeadLetter = Callable[[Record, InvalidEvent], None]


class JoinSource:
    """A `Source` of joined events over an inner source that yields decision and outcome records."""

    def __init__(
        self,
        inner: Source,
        is_decision: Callable[[Record], bool],
        dead_letter: DeadLetter,
        window_s: float,
        lateness_s: float,
        stored: Callable[[str], float | None] = lambda log_id: None,
        metrics: StreamerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits = DEFAULT_LIMITS,
        max_waiting: int = 100_000,
        stored_until: Callable[[], float] = lambda: float("inf"),
    ) -> None:
        self.inner = inner
        self.is_decision = is_decision
        self.dead_letter = dead_letter
        self.window_s = window_s
        self.lateness_s = lateness_s
        self.stored = stored  # event time of a search the buffer already holds (re-read after a restart), or None
        self.clock = clock
        self.metrics = metrics
        self.limits = limits
        self.max_waiting = max_waiting
        # the newest event time `stored` can answer for: a decision newer than it (an outcome newer by two windows,
        # past which it would be unknown anyway) cannot be a stored one, and skips the lookup (~16 us each)
        self.stored_until = stored_until
        self._horizon = float("inf")
        self._lock = threading.Lock()  # a Kafka rebalance drops partitions from the consumer's own callback
        self._open: dict[str, _Open] = {}
        self._waiting: dict[str, list[_Waiting]] = {}
        # log_id -> (window end, log_propensity), kept one more window after it closes, to tell a late outcome from
        # an unknown one and a redelivered decision from a second one
        self._closed: dict[str, tuple[float, float]] = {}
        self._n_waiting = 0
        # partition key (decisions and outcomes) -> (newest event time seen there, wall-clock time of its last read)
        self._newest: dict[str, tuple[float, float]] = {}
        self._next: dict[str, int] = {}  # key -> position after the last record read
        self._reported: dict[str, int] = {}  # the positions last handed on with a record
        self._watermark = float("-inf")
        self.emitted = 0
        self.reread = 0  # records read again after a restart that belong to events already stored
        self.defaulted = 0  # emitted with the default outcome "none"
        self.retracted = {"applied": 0, "too_late": 0}  # retractions by what they found
        self.duplicates = 0  # decisions delivered twice (counted once)

    # ------------------------------------------------------------------------------------------ state
    @property
    def open_decisions(self) -> int:
        return len(self._open)

    @property
    def waiting_outcomes(self) -> int:
        return self._n_waiting

    def positions(self) -> dict[str, int]:
        """Per partition: the offset of the oldest record still held, else the position after the last read."""
        pos = dict(self._next)
        held: list[Record] = []
        for o in self._open.values():
            held.append(o.record)
            held.extend(o.outcome_records)
            held.extend(r for _, r in o.shadows)
        for ws in self._waiting.values():
            held.extend(w.record for w in ws)
        for r in held:
            if r.offset < pos.get(r.key, r.next_position):
                pos[r.key] = r.offset
        return pos

    def drop(self, keys: set[str]) -> None:
        """Forget what was read from partitions this process no longer owns (their next owner re-reads them)."""
        with self._lock:
            for lid in [lid for lid, o in self._open.items() if o.record.key in keys]:
                del self._open[lid]
            for o in self._open.values():  # re-read by the next owner; merged again there
                o.outcomes = [(out, r) for out, r in o.outcomes if r.key not in keys]
                o.shadows = [(d, r) for d, r in o.shadows if r.key not in keys]
            for lid in list(self._waiting):
                self._waiting[lid] = [w for w in self._waiting[lid] if w.record.key not in keys]
                if not self._waiting[lid]:
                    del self._waiting[lid]
            self._n_waiting = sum(len(v) for v in self._waiting.values())
            for k in keys:
                self._next.pop(k, None)
                self._newest.pop(k, None)

    # ------------------------------------------------------------------------------------------ reading
    def _event_time(self, t: float, now: float) -> float:
        """A client's time, bounded by this clock: ahead of it counts as now."""
        return t if t <= now else now

    def _seen(self, key: str, t: float, now: float) -> None:
        newest = self._newest.get(key)
        self._newest[key] = (t if newest is None or t > newest[0] else newest[0], now)

    def _read(self, r: Record, read: Callable[..., Any]) -> Any:
        """`read(value)`, or None after handling a record that is not one: a retraction is applied, anything else
        is a dead letter."""
        raw = r.value or b""
        try:
            return read(raw, limits=self.limits)
        except InvalidEvent as e:
            rt = parse_retraction(raw) if e.reason == "missing_field" else None
            if rt is not None:
                self._retract(rt)
            else:
                self.dead_letter(r, e)
            return None

    def _add_decision(self, r: Record) -> None:
        got = self._read(r, read_decision)
        if got is None:
            return
        d, t = got
        now = self.clock()
        o = self._open.get(d.log_id)
        if o is not None:
            if _same(o.decision, d):
                self.duplicates += 1  # the same decision delivered twice: the first one counts
            else:
                o.shadows.append((d, r))  # dead-lettered when the first closes; stored if the first is retracted
            return
        closed = self._closed.get(d.log_id)
        if closed is not None:
            if closed[1] == d.log_propensity:
                self.duplicates += 1
            else:
                self.dead_letter(r, _duplicate(d.log_id))
            return
        t = self._event_time(t, now)
        if t <= self._horizon and self.stored(d.log_id) is not None:
            self.reread += 1  # joined and stored before a restart: read again from an older held position
            return
        self._seen(r.key, t, now)
        self._open_decision(d, r, t)

    def _open_decision(self, d: Decision, r: Record, t: float) -> None:
        o = _Open(d, r, t)
        waiting = self._waiting.pop(d.log_id, [])
        self._n_waiting -= len(waiting)
        for w in waiting:
            if w.time > t + self.window_s:
                self.dead_letter(w.record, self._late(d.log_id, t + self.window_s))
                continue
            o.outcomes.append((w.outcome, w.record))
        self._open[d.log_id] = o

    def _add_outcome(self, r: Record) -> None:
        got = self._read(r, read_outcome)
        if got is None:
            return
        out, t_out = got
        now = self.clock()
        t = self._event_time(t_out, now) if t_out is not None else now
        self._seen(r.key, t, now)
        o = self._open.get(out.log_id)
        if o is not None and t > o.start + self.window_s:  # attribution is by event time, not by arrival
            self.dead_letter(r, self._late(out.log_id, o.start + self.window_s))
            return
        if o is not None:
            o.outcomes.append((out, r))
            return
        if out.log_id in self._closed:
            self.dead_letter(r, self._late(out.log_id, self._closed[out.log_id][0]))
            return
        stored_at = self.stored(out.log_id) if t <= self._horizon + 2 * self.window_s else None
        if stored_at is not None:  # its decision was joined and stored before a restart
            if t <= stored_at + self.window_s:
                self.reread += 1  # inside its window: part of the stored event (or dead-lettered then)
            else:
                self.dead_letter(r, self._late(out.log_id, stored_at + self.window_s))
            return
        self._hold(_Waiting(out, r, t))

    def _hold(self, w: _Waiting) -> None:
        self._waiting.setdefault(w.outcome.log_id, []).append(w)
        self._n_waiting += 1
        while self._n_waiting > self.max_waiting:  # the oldest first (dicts keep insertion order)
            lid = next(iter(self._waiting))
            oldest = self._waiting[lid].pop(0)
            if not self._waiting[lid]:
                del self._waiting[lid]
            self._n_waiting -= 1
            self.dead_letter(oldest.record, self._unknown(lid, full=True))

    def _retract(self, rt: Retraction) -> None:
        """Remove what a retraction names (see RETRACTIONS above)."""
        lid = rt.retract
        o = self._open.get(lid)
        found = False
        if rt.outcome_id is not None:
            if o is not None:
                keep = [(out, r) for out, r in o.outcomes if out.outcome_id != rt.outcome_id]
                found, o.outcomes = len(keep) < len(o.outcomes), keep
            elif lid in self._waiting:
                keep_w = [w for w in self._waiting[lid] if w.outcome.outcome_id != rt.outcome_id]
                found = len(keep_w) < len(self._waiting[lid])
                self._n_waiting -= len(self._waiting[lid]) - len(keep_w)
                if keep_w:
                    self._waiting[lid] = keep_w
                else:
                    del self._waiting[lid]
        elif o is not None:
            if o.decision.log_propensity == rt.log_propensity:
                found = True
                del self._open[lid]
                if o.shadows:  # a second decision for this log_id (a retry that was answered): it is the one
                    (d, r), rest = o.shadows[0], o.shadows[1:]
                    now = self.clock()
                    self._open_decision(d, r, self._event_time(_timestamp(d.created_at), now))
                    self._open[lid].outcomes = o.outcomes
                    self._open[lid].shadows = rest
                else:  # its outcomes wait for a retried decision, as outcomes read before theirs do
                    for out, r in o.outcomes:
                        t = _timestamp(out.created_at) if out.created_at is not None else o.start
                        self._hold(_Waiting(out, r, min(t, self.clock())))
            else:
                kept = [(d, r) for d, r in o.shadows if d.log_propensity != rt.log_propensity]
                found, o.shadows = len(kept) < len(o.shadows), kept
        kind = "applied" if found else "too_late"
        self.retracted[kind] += 1
        if not found:
            log.warning("join: retraction of %s (%s) found nothing open: already stored, or never logged", lid,
                        "outcome " + str(rt.outcome_id) if rt.outcome_id else "decision")  # fmt: skip

    def _late(self, log_id: str, end: float) -> InvalidEvent:
        return InvalidEvent(
            "late_outcome",
            "log_id",
            f"after its decision's attribution window, which ended at {end:.0f} (join.window_s {self.window_s:g})",
            log_id,
        )

    def _unknown(self, log_id: str, full: bool = False) -> InvalidEvent:
        why = (
            f"more than join.max_waiting_outcomes ({self.max_waiting}) outcomes were waiting for their decisions"
            if full
            else f"no decision with this log_id arrived within join.lateness_s {self.lateness_s:g}s "
            "(or its window closed more than join.window_s ago)"
        )
        return InvalidEvent("unknown_decision", "log_id", why, log_id)

    def _close_windows(self) -> list[Record]:
        # A partition owned but not heard from yet (just after a start or a rebalance) may hold the outcomes of the
        # open decisions: the watermark waits for its first records, or for the source to say it has none.
        unheard = self.inner.behind() - self._newest.keys()
        if self._newest and not unheard:
            now = self.clock()
            # never past this clock: a partition's newest time is bounded by it when read, and moves with it after
            wm = min(min(t + (now - wall) for t, wall in self._newest.values()), now) - self.lateness_s
            self._watermark = max(self._watermark, wm)
        wm = self._watermark
        out: list[Record] = []
        due = sorted((o for o in self._open.values() if o.start + self.window_s <= wm), key=lambda o: o.start)
        for o in due:
            lid = o.decision.log_id
            del self._open[lid]
            self._closed[lid] = (o.start + self.window_s, o.decision.log_propensity)
            for _, r in o.shadows:
                self.dead_letter(r, _duplicate(lid))
            try:
                outcome = merge_all([out for out, _ in o.outcomes], self.limits)
                value = joined_bytes(o.record.value or b"", o.decision, outcome)
            except Exception as e:  # never expected: every record was validated; kept as a dead letter, not raised
                log.exception("join: cannot build the event of %s", lid)
                self.dead_letter(o.record, InvalidEvent("join_failed", "$", f"{type(e).__name__}: {e}", lid))
                continue
            r = o.record
            out.append(
                Record(r.key, r.offset, r.next_position, value, r.topic, r.partition, r.timestamp_ms, r.key_bytes)
            )
            self.emitted += 1
            self.defaulted += outcome is None
        expired = [lid for lid, ws in self._waiting.items() if all(w.time + self.lateness_s <= wm for w in ws)]
        for lid in expired:
            ws = self._waiting.pop(lid)
            self._n_waiting -= len(ws)
            for w in ws:
                self.dead_letter(w.record, self._unknown(lid))
        for lid in [lid for lid, (end, _) in self._closed.items() if end + self.window_s < wm]:
            del self._closed[lid]
        return out

    def poll(self, timeout_s: float) -> list[Record]:
        """Joined events whose window closed, each carrying every partition's position. When records were read but
        nothing closed, a position marker (no value) carries the positions through the loop in order, so that a
        dead-lettered record is not read again after the next seal."""
        records = self.inner.poll(timeout_s)
        with self._lock:
            self._horizon = self.stored_until()
            before = (self.emitted, self.defaulted, self.reread, self.duplicates, dict(self.retracted))
            for r in records:
                if self.is_decision(r):
                    self._add_decision(r)
                else:
                    self._add_outcome(r)
                self._next[r.key] = max(self._next.get(r.key, 0), r.next_position)
            out = self._close_windows()
            if self.metrics is not None:
                m = self.metrics
                m.join_open.set(len(self._open))
                m.join_waiting.set(self.waiting_outcomes)
                emitted, defaulted = self.emitted - before[0], self.defaulted - before[1]
                m.join_emitted.labels(outcome="default").inc(defaulted)
                m.join_emitted.labels(outcome="reported").inc(emitted - defaulted)
                m.join_reread.inc(self.reread - before[2])
                m.join_duplicates.inc(self.duplicates - before[3])
                for kind, n in self.retracted.items():
                    m.join_retractions.labels(result=kind).inc(n - before[4][kind])
            if not out and not records and self._n_waiting == 0 and self._reported == self._next:
                return out
            positions = self.positions()
            if not out and not records:
                # nothing read, nothing closed, but held records may have expired (dead-lettered): carry the moved
                # positions on, so a quiet stream does not keep re-reading them after a restart
                moved = [k for k, v in positions.items() if self._reported.get(k) != v]
                if not moved:
                    return out
                key = moved[0]
                out = [Record(key, positions[key], positions[key], None, marker=True)]
            elif not out:
                r = records[-1]
                out = [Record(r.key, r.offset, positions.get(r.key, 0), None, r.topic, r.partition, marker=True)]
            self._reported = dict(positions)
            for r in out:
                # never the decision's own next position: older records of its partition may still be held
                r.next_position = positions.get(r.key, r.offset)
                r.positions = positions
            return out

    # ------------------------------------------------------------------------------------------ the rest
    def commit(self, positions: dict[str, int]) -> bool:
        return self.inner.commit(positions)

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()

    def lag(self) -> dict[str, int]:
        return self.inner.lag()

    def caught_up(self) -> bool:
        return self.inner.caught_up() and not self._open and not self._waiting

    def behind(self) -> set[str]:
        return self.inner.behind()

    def connected(self) -> bool:
        return self.inner.connected()

    def close(self) -> None:
        self.inner.close()


def _same(a: Decision, b: Decision) -> bool:
    return a.log_propensity == b.log_propensity and a.action == b.action


def _duplicate(log_id: str) -> InvalidEvent:
    return InvalidEvent(
        "duplicate_decision",
        "log_id",
        "another decision with this log_id was already joined (a log_id names one search; use a new one, or the "
        "same request to get the same answer)",
        log_id,
    )


class BothFiles:
    """The embedded default's two streams: the decisions file and the outcomes file, polled in turn."""

    def __init__(self, decisions: Source, outcomes: Source) -> None:
        self.parts = (decisions, outcomes)

    def poll(self, timeout_s: float) -> list[Record]:
        a = self.parts[0].poll(0.0)
        b = self.parts[1].poll(0.0)
        if not a and not b and timeout_s > 0:
            time.sleep(min(timeout_s, 0.2))
        return a + b

    def commit(self, positions: dict[str, int]) -> bool:
        return all(p.commit(positions) for p in self.parts)

    def pause(self) -> None:
        for p in self.parts:
            p.pause()

    def resume(self) -> None:
        for p in self.parts:
            p.resume()

    def lag(self) -> dict[str, int]:
        return {k: v for p in self.parts for k, v in p.lag().items()}

    def caught_up(self) -> bool:
        return all(p.caught_up() for p in self.parts)

    def behind(self) -> set[str]:
        return set().union(*(p.behind() for p in self.parts))

    def connected(self) -> bool:
        return all(p.connected() for p in self.parts)

    def close(self) -> None:
        for p in self.parts:
            p.close()
