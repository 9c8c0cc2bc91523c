"""The embedded default: JSONL lines from a file or a folder of *.jsonl files, followed like `tail -F`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from common.config import StreamerConfig
from streamer.sources.base import FatalSourceError, Record

log = logging.getLogger(__name__)


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

    def connected(self) -> bool:
        return True

    def behind(self) -> set[str]:
        return set()  # poll reads from every file each time

    def close(self) -> None:
        pass
