"""What every source hands the loop: `Record`s with a partition key and a position, behind the `Source` protocol.

Both sources resume from the positions stored in the buffer's manifest, so a restart neither skips nor repeats a
record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


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
    # The outcome join (streamer/join.py): every partition's resume position once this record is applied (the
    # oldest record the join still holds), and a marker that carries only those positions (no value, no row).
    positions: dict[str, int] | None = None
    marker: bool = False


class Source(Protocol):
    def poll(self, timeout_s: float) -> list[Record]: ...
    def commit(self, positions: dict[str, int]) -> bool: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def lag(self) -> dict[str, int]: ...
    def caught_up(self) -> bool: ...
    def connected(self) -> bool:
        """False while the source cannot reach what it reads (Kafka: no broker connected): nothing arriving
        then is an outage, not idleness."""
        ...

    def behind(self) -> set[str]:
        """Keys of the partitions this source owns that still have records to read (or whose end is not known
        yet). The outcome join waits to hear from each before its watermark moves (streamer/join.py)."""
        ...

    def close(self) -> None: ...


class SourceIdentities(Protocol):
    """Where the buffer keeps what each source (a Kafka topic, a file) was when its positions were stored, so that
    positions are never applied to another one (the writer, streamer/writer.py)."""

    def source_identity(self, source: str) -> dict[str, Any] | None: ...
    def record_source_identity(self, source: str, identity: dict[str, Any]) -> None: ...


class FatalSourceError(RuntimeError):
    """A source error that retrying will not fix (bad credentials, missing topic): the daemon exits."""
