"""Event sources: a Kafka topic (kafka-python) and a JSONL file or folder (the embedded default).

Both hand the loop `Record`s with a partition key and a position; both resume from the positions stored in
the buffer's manifest, so a restart neither skips nor repeats a record.

Kafka (kafka-python 3.x runs rebalance listeners on its network thread, where blocking calls are forbidden):
- assigned: the listener only records the partitions; the main thread then seeks each to
  max(stored next position, committed offset) and drops already-fetched records below that floor;
- revoked / lost: the listener drops the partitions' unsealed rows (through `on_revoked`, under the loop's
  lock) and never commits; the next owner re-reads them from the stored position;
- commit: only positions that are already durable, and only for partitions still owned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from common.config import StreamerConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Record:
    key: str  # source partition key: "kafka:<topic>:<partition>" or "file:<absolute path>"
    offset: int  # Kafka offset, or byte offset where the line starts
    next_position: int  # where to resume after this record
    value: bytes | None  # None: a Kafka record without a value (a tombstone)
    topic: str = ""
    partition: int = 0
    timestamp_ms: int = -1
    key_bytes: bytes | None = None


class Source(Protocol):
    def poll(self, timeout_s: float) -> list[Record]: ...
    def commit(self, positions: dict[str, int]) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def lag(self) -> dict[str, int]: ...
    def caught_up(self) -> bool: ...
    def close(self) -> None: ...


class FatalSourceError(RuntimeError):
    """A source error that retrying will not fix (bad credentials, missing topic): the daemon exits."""


# ------------------------------------------------------------------------------------------------ file
class FileSource:
    """JSONL lines from a file or a folder of *.jsonl files, followed like `tail -F` when `follow`.

    A line longer than `max_record_bytes` is handed on as its first `max_record_bytes + 1` bytes (the parse step
    dead-letters it as `too_large`) once its newline is found, and reading goes on after it: one huge line
    neither stalls the source nor is held in memory whole. Blank lines are skipped (JSONL).
    """

    CHUNK = 4 << 20

    def __init__(
        self,
        path: str | Path,
        stored_positions: dict[str, int],
        follow: bool = StreamerConfig.follow,
        max_records: int = StreamerConfig.max_poll_records,
        max_record_bytes: int = StreamerConfig.max_record_bytes,
    ) -> None:
        self.path = Path(path).resolve()
        if not self.path.exists() and not follow:
            raise FatalSourceError(f"file source {self.path} does not exist")
        self.follow = follow
        self.max_records = max_records
        self.max_record_bytes = max_record_bytes
        self._warned_long: set[tuple[str, int]] = set()
        self._pos = {k: v for k, v in stored_positions.items() if k.startswith("file:")}
        self._paused = False

    @staticmethod
    def key_of(path: Path) -> str:
        return f"file:{path}"

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(self.path.glob("*.jsonl"))
        return [self.path] if self.path.exists() else []

    def poll(self, timeout_s: float) -> list[Record]:
        if self._paused:
            time.sleep(timeout_s)
            return []
        out: list[Record] = []
        for f in self._files():
            key = self.key_of(f)
            pos = self._pos.get(key, 0)
            size = f.stat().st_size
            if size < pos:
                log.warning("file source %s shrank below position %d (truncated or replaced): reading from 0", f, pos)
                pos = 0
            if size == pos:
                continue
            with open(f, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read(min(self.CHUNK, size - pos))
                if b"\n" not in chunk and size - pos > self.max_record_bytes:
                    rec = self._long_line(fh, key, pos, chunk)
                    if rec is not None:
                        out.append(rec)
                        self._pos[key] = rec.next_position
                    continue
            start = 0
            while len(out) < self.max_records:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    break  # an incomplete last line: wait for its newline
                line = chunk[start:nl]
                if line.strip():
                    out.append(Record(key, pos + start, pos + nl + 1, line))
                start = nl + 1
            self._pos[key] = pos + start
            if len(out) >= self.max_records:
                break
        if not out and timeout_s > 0:
            time.sleep(min(timeout_s, 0.2))
        return out

    def _long_line(self, fh: Any, key: str, pos: int, head: bytes) -> Record | None:
        """The record of a line longer than a chunk: its head, once its newline is found (None: not yet)."""
        fh.seek(pos + len(head))
        scanned = pos + len(head)
        while block := fh.read(1 << 20):
            nl = block.find(b"\n")
            if nl >= 0:
                end = scanned + nl + 1
                log.warning("file source %s: line at byte %d is %d bytes long: dead-lettered", key, pos, end - pos)
                return Record(key, pos, end, head[: self.max_record_bytes + 1])
            scanned += len(block)
        if (key, pos) not in self._warned_long:
            self._warned_long.add((key, pos))
            log.warning("file source %s: line at byte %d is over %d bytes with no newline yet", key, pos, scanned - pos)
        return None

    def commit(self, positions: dict[str, int]) -> bool:
        return True  # the positions live in the buffer's manifest

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def lag(self) -> dict[str, int]:
        return {f.name: max(0, f.stat().st_size - self._pos.get(self.key_of(f), 0)) for f in self._files()}

    def caught_up(self) -> bool:
        return True  # poll reads to the end of every file

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ kafka
@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic: str
    group_id: str = StreamerConfig.group_id
    client_id: str = "rankrl-streamer"
    max_poll_records: int = StreamerConfig.max_poll_records
    session_timeout_ms: int = StreamerConfig.session_timeout_ms
    group_instance_id: str | None = None  # static membership (KIP-345): a restart takes its partitions back at once
    bootstrap_timeout_ms: int = 15_000
    # 1 MiB (the default) is ~450 events of 2.3 KB: each poll then waits on a fetch round trip
    max_partition_fetch_bytes: int = 8 << 20
    security_protocol: str = StreamerConfig.security_protocol
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if getattr(self, k):
                kw[k] = getattr(self, k)
        return kw


class _AuthFailureCapture(logging.Handler):
    """Remembers an authentication failure kafka-python logs while connecting.

    Kafka 4.x closes the socket on a failed SCRAM exchange without an error response (the broker logs
    "invalid credentials"), so with SASL on, a connection dropped during login counts as a refused login.
    """

    def __init__(self, sasl: bool) -> None:
        super().__init__(level=logging.WARNING)
        self.sasl = sasl
        self.failure: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is not None:
            return
        msg = record.getMessage()
        if "SaslAuthenticationFailed" in msg or "Authentication failed" in msg:
            self.failure = msg
        elif self.sasl and "socket disconnected" in msg:
            self.failure = "the broker closed the connection during the SASL login"


def _auth_failed(settings: KafkaSettings, detail: object) -> FatalSourceError:
    """One message for a refused login, whether the broker answered with an error or dropped the connection."""
    return FatalSourceError(
        f"kafka authentication failed at {settings.bootstrap_servers} (user {settings.sasl_username!r}, "
        f"mechanism {settings.sasl_mechanism}; wrong username, password or mechanism?): {detail}"
    )


def _auth_errors() -> tuple[type[BaseException], ...]:
    import kafka.errors as ke

    names = (
        "SaslAuthenticationFailedError",
        "AuthenticationFailedError",
        "AuthenticationMethodNotSupported",
        "TopicAuthorizationFailedError",
        "GroupAuthorizationFailedError",
    )
    return tuple(getattr(ke, n) for n in names if hasattr(ke, n))


class KafkaSource:
    """A consumer-group member reading one topic; commits only durable positions."""

    def __init__(
        self,
        settings: KafkaSettings,
        stored_positions: Callable[[], dict[str, int]],
        on_revoked: Callable[[set[str]], None],
    ) -> None:
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.errors import KafkaError

        self.settings = settings
        self._stored_positions = stored_positions
        self._on_revoked = on_revoked
        self._lock = threading.Lock()
        self._new: set[Any] = set()
        self._floor: dict[Any, int] = {}
        self._held: list[Record] = []
        self._paused = False
        source = self

        class Listener(ConsumerRebalanceListener):
            # Runs on kafka-python's IO thread: no blocking consumer calls here.
            def on_partitions_revoked(self, revoked: Any) -> None:
                source._revoke(revoked, "revoked")

            def on_partitions_assigned(self, assigned: Any) -> None:
                with source._lock:
                    source._new |= set(assigned)
                log.info("kafka assigned partitions=%s", sorted(tp.partition for tp in assigned))

            def on_partitions_lost(self, lost: Any) -> None:
                source._revoke(lost, "lost")

        auth = _AuthFailureCapture(sasl=bool(settings.sasl_mechanism))
        logging.getLogger("kafka").addHandler(auth)
        try:
            self.consumer = KafkaConsumer(
                group_id=settings.group_id,
                client_id=settings.client_id,
                enable_auto_commit=False,  # commit only what the buffer holds durably
                auto_offset_reset="earliest",  # a new group must not skip what was produced before it joined
                max_poll_records=settings.max_poll_records,
                session_timeout_ms=settings.session_timeout_ms,
                group_instance_id=settings.group_instance_id,
                max_partition_fetch_bytes=settings.max_partition_fetch_bytes,
                bootstrap_timeout_ms=settings.bootstrap_timeout_ms,
                **settings.client_kwargs(),
            )
        except (KafkaError, *_auth_errors()) as e:
            # kafka-python retries a failed login with backoff until its bootstrap deadline, then reports only
            # a timeout: name the real cause, and let the supervisor's restart policy do any retrying.
            if auth.failure or isinstance(e, _auth_errors()):
                raise _auth_failed(settings, auth.failure or repr(e)) from None
            raise FatalSourceError(f"cannot connect to kafka at {settings.bootstrap_servers}: {e}") from None
        finally:
            logging.getLogger("kafka").removeHandler(auth)
        self.consumer.subscribe([settings.topic], listener=Listener())

    def key(self, tp: Any) -> str:
        return f"kafka:{tp.topic}:{tp.partition}"

    def _revoke(self, tps: Any, why: str) -> None:
        keys = {self.key(tp) for tp in tps}
        with self._lock:
            self._new -= set(tps)
            for tp in tps:
                self._floor.pop(tp, None)
            self._held = [r for r in self._held if r.key not in keys]
        if keys:
            self._on_revoked(keys)
            log.info(
                "kafka %s partitions=%s (unsealed rows dropped; the next owner re-reads them)",
                why,
                sorted(tp.partition for tp in tps),
            )

    def _settle_new_partitions(self) -> set[Any]:
        """Seek every newly assigned partition to its floor; returns them (their fetched records are stale).

        Always seek, even forwards of the consumer's position: on a rebalance this process's own partitions are
        revoked too (their unsealed rows dropped) and come back with a position past those rows.
        """
        with self._lock:
            new, self._new = self._new, set()
        if not new:
            return new
        stored = self._stored_positions()
        for tp in new:
            committed = self.consumer.committed(tp)
            floor = max(stored.get(self.key(tp), 0), committed or 0)
            self._floor[tp] = floor
            self.consumer.seek(tp, floor)
            log.info(
                "kafka partition=%d resumes at %d (stored %s, committed %s)",
                tp.partition,
                floor,
                stored.get(self.key(tp)),
                committed,
            )
        return new

    def poll(self, timeout_s: float) -> list[Record]:
        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
            settled = self._settle_new_partitions()
        except _auth_errors() as e:
            raise _auth_failed(self.settings, repr(e)) from None
        assigned = self.consumer.assignment()
        out: list[Record] = []
        for tp, msgs in batches.items():
            if tp not in assigned or tp in settled:
                continue  # not ours, or fetched before the seek: read again from the floor
            floor = self._floor.get(tp, 0)
            key = self.key(tp)
            for m in msgs:
                if m.offset < floor:
                    continue
                out.append(Record(key, m.offset, m.offset + 1, m.value, tp.topic, tp.partition, m.timestamp, m.key))
        if self._paused:
            self._held.extend(out)
            return []
        if self._held:
            out, self._held = self._held + out, []
        return out

    def commit(self, positions: dict[str, int]) -> bool:
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        assigned = self.consumer.assignment()
        offsets = {}
        for key, nxt in positions.items():
            _, topic, part = key.split(":", 2)
            tp = TopicPartition(topic, int(part))
            if tp in assigned:
                offsets[tp] = OffsetAndMetadata(nxt, "", -1)
        if not offsets:
            return True
        try:
            self.consumer.commit(offsets)
            return True
        except KafkaError as e:
            # The data is durable already: the next owner resumes from the stored positions.
            log.warning("kafka commit failed (data is durable; continuing): %s", e)
            return False

    def pause(self) -> None:
        self._paused = True
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self.consumer.resume(*self.consumer.assignment())

    def lag(self) -> dict[str, int]:
        out = {}
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                out[str(tp.partition)] = max(0, hw - self.consumer.position(tp))
            except Exception:  # position unknown during a rebalance
                continue
        return out

    def caught_up(self) -> bool:
        """Partitions assigned and nothing left behind them (waiting for a rebalance is not idle)."""
        if not self.consumer.assignment() or self._new:
            return False
        return all(v == 0 for v in self.lag().values()) and len(self.lag()) == len(self.consumer.assignment())

    def close(self) -> None:
        self.consumer.close(autocommit=False)
