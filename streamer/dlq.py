"""Dead letters: records `parse_event` rejected, kept with their raw bytes, the error and the source position.

File source -> `<buffer>/dlq.jsonl` (appended and fsynced before the positions that cover them are sealed).
Kafka source -> the `<topic>.dlq` topic, raw value unchanged, context in headers (as Kafka Connect's
dead-letter reporter names them); every send is confirmed before the source offset is committed.
A crash between the dead letter and the seal can repeat that dead letter (at least once); the file sink
drops such repeats on restart by position.

Bounded by bytes: a dead letter keeps at most `max_value_bytes` of its record (the rest is still in the source,
at the position it names), the pending ones report `pending_bytes` so that the loop seals before they pile up,
and the file sink rotates `dlq.jsonl` after a seal once it passes `file_max_bytes`, keeping `keep_files` old ones.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import orjson

from common.config import StreamerConfig
from common.durable import fsync_dir
from common.schema import InvalidEvent
from streamer.sources import KafkaSettings, Record

log = logging.getLogger(__name__)


class DeadLetters(Protocol):
    def write(self, record: Record, error: InvalidEvent) -> None: ...
    def flush(self) -> int:
        """Make every written dead letter durable (or raise, keeping them); returns how many became durable."""
        ...

    def sealed(self, positions: dict[str, int]) -> None: ...
    @property
    def pending_bytes(self) -> int: ...
    def close(self) -> None: ...


def _context(record: Record, error: InvalidEvent) -> dict[str, Any]:
    return {
        "source": record.key,
        "offset": record.offset,
        "reason": error.reason,
        "field": error.field,
        "error": str(error),
        "log_id": error.log_id,
    }


class FileDeadLetters:
    """Appends dead letters to a JSONL file; `flush` makes them durable.

    On open, a torn last line (a crash or a full disk mid-append) is cut off, so the next entry starts on its
    own line; its record is re-read and dead-lettered again. Only entries at or past the stored positions are
    remembered (those are the ones a restart can repeat), and `sealed` forgets them as positions advance.
    """

    def __init__(
        self,
        path: str | Path,
        stored_positions: dict[str, int] | None = None,
        max_value_bytes: int = StreamerConfig.dlq_max_value_bytes,
        file_max_bytes: int = StreamerConfig.dlq_file_max_bytes,
        keep_files: int = StreamerConfig.dlq_file_keep,
    ) -> None:
        self.path = Path(path)
        self.max_value_bytes = max_value_bytes
        self.file_max_bytes = file_max_bytes
        self.keep_files = keep_files
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._seen: set[tuple[str, int]] = set()
        stored = stored_positions or {}
        if self.path.exists():
            self._repair_torn_tail()
            with open(self.path, "rb") as f:
                for line in f:  # streamed: only the entries a restart can repeat are kept
                    try:
                        d = orjson.loads(line)
                        if d["offset"] >= stored.get(d["source"], 0):
                            self._seen.add((d["source"], d["offset"]))
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue

    def _repair_torn_tail(self) -> None:
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            back = min(size, 1 << 20)
            while True:
                f.seek(size - back)
                nl = f.read(back).rfind(b"\n")
                if nl >= 0 or back == size:
                    break
                back = min(size, back * 2)
            keep = size - back + nl + 1 if nl >= 0 else 0
            f.truncate(keep)
            os.fsync(f.fileno())
        log.warning(
            "dead letters %s: cut a torn last line (%d bytes); its record is dead-lettered again",
            self.path,
            size - keep,
        )

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def write(self, record: Record, error: InvalidEvent) -> None:
        if (record.key, record.offset) in self._seen:
            return
        entry = _context(record, error)
        value = record.value
        if value is not None and len(value) > self.max_value_bytes:
            entry["truncated_from_bytes"] = len(value)
            value = value[: self.max_value_bytes]
        if value is None:
            entry["raw"] = None
        else:
            try:
                entry["raw"] = value.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_base64"] = base64.b64encode(value).decode()
        line = orjson.dumps(entry) + b"\n"
        self._pending.append(line)
        self._pending_bytes += len(line)
        self._seen.add((record.key, record.offset))

    def flush(self) -> int:
        if not self._pending:
            return 0
        # Unbuffered: a buffered file retries its partial write when it is truncated or closed, so after a full
        # disk the truncate below would fail and leave a torn line for the next entry to be glued onto.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(b"".join(self._pending))
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # else the torn tail is cut on the next open
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        done = len(self._pending)
        self._pending, self._pending_bytes = [], 0
        return done

    def sealed(self, positions: dict[str, int]) -> None:
        """Positions are durable: forget entries below them, and rotate the file once it is large."""
        if self._seen:
            self._seen = {(k, o) for k, o in self._seen if o >= positions.get(k, 0)}
        if self._pending or not self.path.exists() or self.path.stat().st_size < self.file_max_bytes:
            return
        for i in range(self.keep_files, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if i == self.keep_files:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        fsync_dir(self.path.parent)
        log.info("dead letters rotated %s (keeping %d old files)", self.path, self.keep_files)

    def close(self) -> None:
        try:
            self.flush()
        except OSError as e:  # not committed: their records are read again and dead-lettered then
            log.error("dead letters %s: %d not written at close: %s", self.path, len(self._pending), e)


_SIZE_ERRORS = ("MessageSizeTooLargeError", "RecordTooLargeError", "InvalidRecordError")


class KafkaDeadLetters:
    """Sends dead letters to `<topic>.dlq`; `flush` waits until the broker confirmed every one.

    A send that fails stays pending and is sent again on the next flush (the loop keeps the source offsets
    uncommitted meanwhile); one the broker refuses for its size is sent again without its value, its headers
    saying so, since the record itself is still in the source topic at the offset they name.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        group_id: str,
        max_value_bytes: int = StreamerConfig.dlq_max_value_bytes,
        delivery_timeout_ms: int = 120_000,
    ) -> None:
        self.topic = f"{settings.topic}.dlq"
        self.group_id = group_id
        self.max_value_bytes = max_value_bytes
        self.settings = settings
        self.delivery_timeout_ms = delivery_timeout_ms
        self.producer: Any = self._new_producer()  # None after a failure, until the next send makes a new one
        self._pending: list[list[Any]] = []  # [record, error, value sent, future or None]
        self._pending_bytes = 0

    def _new_producer(self) -> Any:
        from kafka import KafkaProducer

        s = self.settings
        return KafkaProducer(
            acks="all",
            linger_ms=5,
            bootstrap_timeout_ms=s.bootstrap_timeout_ms,
            delivery_timeout_ms=self.delivery_timeout_ms,
            request_timeout_ms=min(30_000, self.delivery_timeout_ms // 2),
            **s.client_kwargs(),
        )

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def _headers(self, record: Record, error: InvalidEvent, value: bytes | None) -> list[tuple[str, bytes]]:
        headers = [
            ("dlq.original.topic", record.topic.encode()),
            ("dlq.original.partition", str(record.partition).encode()),
            ("dlq.original.offset", str(record.offset).encode()),
            ("dlq.original.timestamp", str(record.timestamp_ms).encode()),
            ("dlq.consumer.group", self.group_id.encode()),
            ("dlq.error.reason", error.reason.encode()),
            ("dlq.error.field", error.field.encode()[:1024]),
            ("dlq.error.message", str(error).encode()[:4096]),
        ]
        original = len(record.value or b"")
        if (value is not None and len(value) < original) or (value is None and original):
            headers.append(("dlq.original.truncated_from_bytes", str(original).encode()))
        return headers

    def _send(self, entry: list[Any]) -> None:
        record, error, value = entry[0], entry[1], entry[2]
        if value is None and record.key_bytes is None:
            value = b""  # Kafka refuses a record with neither key nor value
        entry[3] = None  # not sent, until the producer takes it
        if self.producer is None:
            self.producer = self._new_producer()
        try:
            entry[3] = self.producer.send(
                self.topic, key=record.key_bytes, value=value, headers=self._headers(record, error, value)
            )
        except Exception as e:  # kafka-python checks the size before sending
            if type(e).__name__ not in _SIZE_ERRORS or not value:
                raise
            entry[2], entry[3] = b"", None
            self._send(entry)

    def write(self, record: Record, error: InvalidEvent) -> None:
        value = record.value
        if value is not None and len(value) > self.max_value_bytes:
            value = value[: self.max_value_bytes]
        entry: list[Any] = [record, error, value, None]
        self._send(entry)
        self._pending.append(entry)
        self._pending_bytes += len(value or b"")

    def flush(self) -> int:
        if not self._pending:
            return 0
        total = len(self._pending)
        failed: list[list[Any]] = []
        first_error: Exception | None = None
        try:
            if self.producer is not None:
                self.producer.flush(timeout=30)
        except Exception as e:  # not all sent in time: each entry's own future says which
            first_error = e
        for entry in self._pending:
            if entry[3] is None:  # never sent: no producer could be made then
                failed.append(entry)
                continue
            try:
                entry[3].get(timeout=0 if first_error is not None else 30)
            except Exception as e:  # the broker did not take it: keep it, resend, commit nothing meanwhile
                if type(e).__name__ in _SIZE_ERRORS and entry[2]:
                    entry[2] = b""
                else:
                    first_error = first_error or e
                failed.append(entry)
        if first_error is not None:
            # After its batches expired in an outage, kafka-python's idempotent producer can stay without a
            # producer id and never send again: a fresh producer resends what is pending.
            log.warning("dead letters to %s: %d not confirmed (%s); resending with a new producer",
                        self.topic, len(failed), first_error)  # fmt: skip
            with contextlib.suppress(Exception):
                if self.producer is not None:
                    self.producer.close(timeout=0)
            self.producer = None
        try:
            for entry in failed:
                self._send(entry)
        except Exception as e:  # no broker to make a producer with: the rest stay unsent, tried at the next flush
            first_error = first_error or e
        self._pending = failed
        self._pending_bytes = sum(len(e[2] or b"") for e in failed)
        if failed:
            if first_error is not None:
                raise first_error
            self.flush()  # only size refusals: their value-less resends are confirmed now
        return total

    def sealed(self, positions: dict[str, int]) -> None:
        pass

    def close(self) -> None:
        try:
            self.flush()
        except Exception as e:  # not committed: their records are read again and dead-lettered then
            log.error("dead letters to %s: %d not confirmed at close: %s", self.topic, len(self._pending), e)
        if self.producer is not None:
            try:
                self.producer.close(timeout=10)
            except Exception as e:  # its unconfirmed records are logged above; nothing else to save
                log.warning("dead letters to %s: producer close: %s", self.topic, e)
