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

Kafka: one consumer reads both topics. Keyed by log_id with the same partition count, a search's decision and
outcomes share a partition number, and the range assignor gives partition i of both topics to one member.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from common.decisions import Decision, Outcome, joined_event, merge_outcomes, parse_decision, parse_outcome
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
    outcome: Outcome | None = None
    outcome_records: list[Record] = field(default_factory=list)


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
    ) -> None:
        self.inner = inner
        self.is_decision = is_decision
        self.dead_letter = dead_letter
        self.window_s = window_s
        self.lateness_s = lateness_s
        self.stored = stored  # event time of a search the buffer already holds (re-read after a restart), or None
        self.clock = clock
        self.metrics = metrics
        self._lock = threading.Lock()  # a Kafka rebalance drops partitions from the consumer's own callback
        self._open: dict[str, _Open] = {}
        self._waiting: dict[str, list[_Waiting]] = {}
        # log_id -> window end, kept one more window after it closes, to tell a late outcome from an unknown one
        self._closed: dict[str, float] = {}
        # partition key (decisions and outcomes) -> (newest event time seen there, wall-clock time of its last read)
        self._newest: dict[str, tuple[float, float]] = {}
        self._next: dict[str, int] = {}  # key -> position after the last record read
        self._watermark = float("-inf")
        self.emitted = 0
        self.reread = 0  # records read again after a restart that belong to events already stored
        self.defaulted = 0  # emitted with the default outcome "none"

    # ------------------------------------------------------------------------------------------ state
    @property
    def open_decisions(self) -> int:
        return len(self._open)

    @property
    def waiting_outcomes(self) -> int:
        return sum(len(v) for v in self._waiting.values())

    def positions(self) -> dict[str, int]:
        """Per partition: the offset of the oldest record still held, else the position after the last read."""
        pos = dict(self._next)
        held: list[Record] = []
        for o in self._open.values():
            held.append(o.record)
            held.extend(o.outcome_records)
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
            for o in self._open.values():
                if any(r.key in keys for r in o.outcome_records):  # re-read by the next owner; merge again there
                    o.outcome_records = [r for r in o.outcome_records if r.key not in keys]
            for lid in list(self._waiting):
                self._waiting[lid] = [w for w in self._waiting[lid] if w.record.key not in keys]
                if not self._waiting[lid]:
                    del self._waiting[lid]
            for k in keys:
                self._next.pop(k, None)
                self._newest.pop(k, None)

    # ------------------------------------------------------------------------------------------ reading
    def _add_decision(self, r: Record) -> None:
        try:
            d = parse_decision(r.value or b"")
        except InvalidEvent as e:
            self.dead_letter(r, e)
            return
        if d.log_id in self._open or d.log_id in self._closed:
            return  # the same decision logged twice (a retried produce): the first one counts
        if self.stored(d.log_id) is not None:
            self.reread += 1  # joined and stored before a restart: read again from an older held position
            return
        t = _timestamp(d.created_at)
        self._newest[r.key] = (max(self._newest.get(r.key, (t, 0.0))[0], t), self.clock())
        o = _Open(d, r, t)
        for w in self._waiting.pop(d.log_id, []):
            if w.time > t + self.window_s:
                self.dead_letter(w.record, self._late(d.log_id, t + self.window_s))
                continue
            o.outcome = w.outcome if o.outcome is None else merge_outcomes(o.outcome, w.outcome)
            o.outcome_records.append(w.record)
        self._open[d.log_id] = o

    def _add_outcome(self, r: Record) -> None:
        try:
            out = parse_outcome(r.value or b"")
        except InvalidEvent as e:
            self.dead_letter(r, e)
            return
        t = _timestamp(out.created_at) if out.created_at is not None else self.clock()
        self._newest[r.key] = (max(self._newest.get(r.key, (t, 0.0))[0], t), self.clock())
        o = self._open.get(out.log_id)
        if o is not None and t > o.start + self.window_s:  # attribution is by event time, not by arrival
            self.dead_letter(r, self._late(out.log_id, o.start + self.window_s))
            return
        if o is not None:
            o.outcome = out if o.outcome is None else merge_outcomes(o.outcome, out)
            o.outcome_records.append(r)
            return
        if out.log_id in self._closed:
            self.dead_letter(r, self._late(out.log_id, self._closed[out.log_id]))
            return
        stored_at = self.stored(out.log_id)
        if stored_at is not None:  # its decision was joined and stored before a restart
            if t <= stored_at + self.window_s:
                self.reread += 1  # inside its window: part of the stored event (or dead-lettered then)
            else:
                self.dead_letter(r, self._late(out.log_id, stored_at + self.window_s))
            return
        self._waiting.setdefault(out.log_id, []).append(_Waiting(out, r, t))

    def _late(self, log_id: str, end: float) -> InvalidEvent:
        return InvalidEvent(
            "late_outcome",
            "log_id",
            f"after its decision's attribution window, which ended at {end:.0f} (join.window_s {self.window_s:g})",
            log_id,
        )

    def _close_windows(self) -> list[Record]:
        # A partition owned but not heard from yet (just after a start or a rebalance) may hold the outcomes of the
        # open decisions: the watermark waits for its first records, or for the source to say it has none.
        unheard = self.inner.behind() - self._newest.keys()
        if self._newest and not unheard:
            now = self.clock()
            wm = min(t + (now - wall) for t, wall in self._newest.values()) - self.lateness_s
            self._watermark = max(self._watermark, wm)
        wm = self._watermark
        out: list[Record] = []
        due = sorted((o for o in self._open.values() if o.start + self.window_s <= wm), key=lambda o: o.start)
        for o in due:
            del self._open[o.decision.log_id]
            self._closed[o.decision.log_id] = o.start + self.window_s
            value = _dumps(joined_event(o.decision, o.outcome))
            r = o.record
            out.append(
                Record(r.key, r.offset, r.next_position, value, r.topic, r.partition, r.timestamp_ms, r.key_bytes)
            )
            self.emitted += 1
            self.defaulted += o.outcome is None
        for lid in [lid for lid, ws in self._waiting.items() if all(w.time + self.lateness_s <= wm for w in ws)]:
            for w in self._waiting.pop(lid):
                self.dead_letter(
                    w.record,
                    InvalidEvent(
                        "unknown_decision",
                        "log_id",
                        f"no decision with this log_id arrived within join.lateness_s {self.lateness_s:g}s "
                        "(or its window closed more than join.window_s ago)",
                        lid,
                    ),
                )
        for lid in [lid for lid, end in self._closed.items() if end + self.window_s < wm]:
            del self._closed[lid]
        return out

    def poll(self, timeout_s: float) -> list[Record]:
        """Joined events whose window closed, each carrying every partition's position. When records were read but
        nothing closed, a position marker (no value) carries the positions through the loop in order, so that a
        dead-lettered record is not read again after the next seal."""
        records = self.inner.poll(timeout_s)
        with self._lock:
            before = (self.emitted, self.defaulted, self.reread)
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
            if not out and not records:
                return out
            positions = self.positions()
            if not out:
                r = records[-1]
                out = [Record(r.key, r.offset, positions.get(r.key, 0), None, r.topic, r.partition, marker=True)]
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
