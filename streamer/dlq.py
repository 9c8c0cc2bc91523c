"""Dead letters: records `parse_event` rejected, kept with their raw bytes, the error and the source position.

File source -> `<buffer>/dlq.jsonl` (appended and fsynced before the positions that cover them are sealed).
Kafka source -> the `<topic>.dlq` topic, raw value unchanged, context in headers (as Kafka Connect's
dead-letter reporter names them); every send is confirmed before the source offset is committed.
A crash between the dead letter and the seal can repeat that dead letter (at least once); the file sink
drops such repeats on restart by position.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import orjson

from common.schema import InvalidEvent
from streamer.sources import KafkaSettings, Record

log = logging.getLogger(__name__)


class DeadLetters(Protocol):
    def write(self, record: Record, error: InvalidEvent) -> None: ...
    def flush(self) -> None: ...
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
    """Appends dead letters to a JSONL file; `flush` makes them durable."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pending: list[bytes] = []
        self._seen: set[tuple[str, int]] = set()
        if self.path.exists():
            for line in self.path.read_bytes().splitlines():
                try:
                    d = orjson.loads(line)
                    self._seen.add((d["source"], d["offset"]))
                except (orjson.JSONDecodeError, KeyError):
                    continue  # a torn last line from a crash: the record is written again

    def write(self, record: Record, error: InvalidEvent) -> None:
        if (record.key, record.offset) in self._seen:
            return
        entry = _context(record, error)
        try:
            entry["raw"] = record.value.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_base64"] = base64.b64encode(record.value).decode()
        self._pending.append(orjson.dumps(entry) + b"\n")
        self._seen.add((record.key, record.offset))

    def flush(self) -> None:
        if not self._pending:
            return
        with open(self.path, "ab") as f:
            f.write(b"".join(self._pending))
            f.flush()
            os.fsync(f.fileno())
        self._pending = []

    def close(self) -> None:
        self.flush()


class KafkaDeadLetters:
    """Sends dead letters to `<topic>.dlq`; `flush` waits until the broker confirmed every one."""

    def __init__(self, settings: KafkaSettings, group_id: str) -> None:
        from kafka import KafkaProducer

        self.topic = f"{settings.topic}.dlq"
        self.group_id = group_id
        self.producer = KafkaProducer(
            acks="all", linger_ms=5, bootstrap_timeout_ms=settings.bootstrap_timeout_ms, **settings.client_kwargs()
        )
        self._futures: list[Any] = []

    def write(self, record: Record, error: InvalidEvent) -> None:
        headers = [
            ("dlq.original.topic", record.topic.encode()),
            ("dlq.original.partition", str(record.partition).encode()),
            ("dlq.original.offset", str(record.offset).encode()),
            ("dlq.original.timestamp", str(record.timestamp_ms).encode()),
            ("dlq.consumer.group", self.group_id.encode()),
            ("dlq.error.reason", error.reason.encode()),
            ("dlq.error.field", error.field.encode()),
            ("dlq.error.message", str(error).encode()),
        ]
        self._futures.append(self.producer.send(self.topic, key=record.key_bytes, value=record.value, headers=headers))

    def flush(self) -> None:
        if not self._futures:
            return
        self.producer.flush(timeout=30)
        futures, self._futures = self._futures, []
        for f in futures:
            f.get(timeout=30)  # raises when the broker did not take it: the offset is then not committed

    def close(self) -> None:
        self.flush()
        self.producer.close(timeout=10)
