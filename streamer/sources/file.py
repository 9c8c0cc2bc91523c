"""The embedded default: JSONL lines from a file or a folder of *.jsonl files, followed like `tail -F`."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from common.config import StreamerConfig
from streamer.sources.base import FatalSourceError, Record, SourceIdentities

log = logging.getLogger(__name__)


HEAD_BYTES = 256  # a file's first bytes: with its inode, what tells a rewritten file from the one that was read


class FileSource:
    """JSONL lines from a file or a folder of *.jsonl files, followed like `tail -F` when `follow`.

    A line longer than `max_record_bytes` is handed on as its first `max_record_bytes + 1` bytes (the parse step
    dead-letters it as `too_large`) once its newline is found, and reading goes on after it: one huge line
    neither stalls the source nor is held in memory whole. Blank lines are skipped (JSONL).

    A file replaced (another inode), truncated (smaller than the position) or rewritten in place (other first
    bytes) is a new file: it is read from its start under a new partition key (`file:PATH#N`, generation N), so
    its records are neither skipped at the old position nor taken for rows already stored or dead letters already
    written at the same offsets. The buffer's manifest keeps each path's identity and current key.

    ROTATION (move, then create: logrotate's default, and what `rankrl serve`'s logs follow). The source holds the
    file it reads open; when PATH names another file, it reads the held one to its end first, and goes on doing so
    for `ROTATION_GRACE_S` (a writer may append one last batch to the file it held), then follows the new file. A
    rotation while the streamer is stopped loses the unread rest of the moved file: rotate while it runs, or
    point the source at a folder and rotate into names that stay in it (docs/operating.md).
    """

    ROTATION_GRACE_S = 2.0

    CHUNK = 4 << 20

    def __init__(
        self,
        path: str | Path,
        stored_positions: dict[str, int],
        follow: bool = StreamerConfig.follow,
        max_records: int = StreamerConfig.max_poll_records,
        max_record_bytes: int = StreamerConfig.max_record_bytes,
        identities: SourceIdentities | None = None,
    ) -> None:
        self.path = Path(path).resolve()
        self._identities = identities
        self._keys: dict[Path, str] = {}  # each file's current partition key (its generation)
        self._idents: dict[Path, dict[str, Any]] = {}
        self._looked: dict[Path, tuple[int, int, int, int]] = {}  # (dev, ino, size, mtime) when last verified
        if not self.path.exists() and not follow:
            raise FatalSourceError(f"file source {self.path} does not exist")
        self.follow = follow
        self.max_records = max_records
        self.max_record_bytes = max_record_bytes
        self._warned_long: set[tuple[str, int]] = set()
        self._pos = {k: v for k, v in stored_positions.items() if k.startswith("file:")}
        self._paused = False
        # per path: the file read last (open), its key, (dev, ino), and when PATH was seen naming another file
        self._held: dict[Path, tuple[Any, str, tuple[int, int], float | None]] = {}

    @staticmethod
    def key_of(path: Path) -> str:
        return f"file:{path}"

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(self.path.glob("*.jsonl"))
        return [self.path] if self.path.exists() else []

    @staticmethod
    def _identity(fd: int, st: os.stat_result) -> dict[str, Any]:
        head = os.pread(fd, HEAD_BYTES, 0)
        return {"dev": st.st_dev, "ino": st.st_ino, "head": hashlib.sha256(head).hexdigest(), "head_len": len(head)}

    @staticmethod
    def _same(fd: int, before: dict[str, Any], st: os.stat_result) -> bool:
        if (before.get("dev"), before.get("ino")) != (st.st_dev, st.st_ino):
            return False
        return hashlib.sha256(os.pread(fd, int(before.get("head_len", 0)), 0)).hexdigest() == before.get("head")

    def _key(self, f: Path, fd: int, st: os.stat_result) -> str:
        """The file's partition key, a new generation when it is not the file whose positions are stored."""
        base = self.key_of(f)
        key, before = self._keys.get(f, base), self._idents.get(f)
        if before is None:  # first look in this process: what the manifest says
            stored = self._identities.source_identity(base) if self._identities else None
            key, before = (stored["key"], stored) if stored else (base, None)
        pos = self._pos.get(key, 0)
        if before is not None and (st.st_size < pos or not self._same(fd, before, st)):
            gen = int(key.rpartition("#")[2]) + 1 if "#" in key else 1
            log.warning("file source %s was replaced, truncated or rewritten (read to byte %d, now %d bytes): "
                        "reading the new file from its start as generation %d", f, pos, st.st_size, gen)  # fmt: skip
            key, before = f"{base}#{gen}", None
        if before is None or (before.get("head_len", 0) < HEAD_BYTES and st.st_size > before.get("head_len", 0)):
            ident = {**self._identity(fd, st), "key": key}  # recorded before any position under its key is stored
            if self._identities is not None:
                self._identities.record_source_identity(base, ident)
            before = ident
        self._keys[f], self._idents[f] = key, before
        return key

    def poll(self, timeout_s: float) -> list[Record]:
        if self._paused:
            time.sleep(timeout_s)
            return []
        out: list[Record] = []
        for f in sorted({*self._files(), *self._held}):
            if self._drain_rotated(f, out):
                continue  # the moved file still has (or may still get) records: the new one waits
            try:
                st = f.stat()
            except FileNotFoundError:  # rotated away since the listing
                continue
            looked = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if self._looked.get(f) == looked and st.st_size == self._pos.get(self._keys[f], 0):
                continue  # unchanged since it was last verified and read to its end: no need to open it
            try:
                fh = open(f, "rb")  # noqa: SIM115 -- closed by the with below, after the race is handled
            except FileNotFoundError:
                continue
            with fh:
                # identity and data from one open file: a replacement between a stat and an open cannot mix them
                st = os.fstat(fh.fileno())
                key = self._key(f, fh.fileno(), st)
                self._hold(f, key, st)
                self._looked[f] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                pos = self._pos.get(key, 0)
                size = st.st_size
                if size == pos:
                    continue
                fh.seek(pos)
                chunk = fh.read(min(self.CHUNK, size - pos))
                if b"\n" not in chunk and size - pos > self.max_record_bytes:
                    rec = self._long_line(fh, key, pos, chunk)
                    if rec is not None:
                        out.append(rec)
                        self._pos[key] = rec.next_position
                    continue
            start, name = 0, str(f)
            while len(out) < self.max_records:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    break  # an incomplete last line: wait for its newline
                line = chunk[start:nl]
                if line.strip():
                    out.append(Record(key, pos + start, pos + nl + 1, line, name))
                start = nl + 1
            self._pos[key] = pos + start
            if len(out) >= self.max_records:
                break
        if not out and timeout_s > 0:
            time.sleep(min(timeout_s, 0.2))
        return out

    def _hold(self, f: Path, key: str, st: os.stat_result) -> None:
        """Keep the file being read open, so that its rest can be read after it is moved away."""
        held = self._held.get(f)
        if held is not None and held[2] == (st.st_dev, st.st_ino) and held[1] == key:
            return
        if held is not None:
            held[0].close()
        try:
            fh = open(f, "rb")  # noqa: SIM115 -- closed when the path moves on to another file
        except FileNotFoundError:
            self._held.pop(f, None)
            return
        ident = os.fstat(fh.fileno())
        if (ident.st_dev, ident.st_ino) != (st.st_dev, st.st_ino):  # replaced in between: held next time
            fh.close()
            self._held.pop(f, None)
            return
        self._held[f] = (fh, key, (st.st_dev, st.st_ino), None)

    def _drain_rotated(self, f: Path, out: list[Record]) -> bool:
        """When PATH no longer names the held file, read the held file's rest; True while it must be followed."""
        held = self._held.get(f)
        if held is None:
            return False
        fh, key, devino, since = held
        try:
            st = f.stat()
            same = (st.st_dev, st.st_ino) == devino
        except FileNotFoundError:
            same = False
        if same:
            return False
        now = time.monotonic()
        if since is None:
            log.info("file source %s was moved away: reading the rest of the moved file before the new one", f)
            since = now
            self._held[f] = (fh, key, devino, since)
        size = os.fstat(fh.fileno()).st_size
        pos = self._pos.get(key, 0)
        if size > pos and len(out) < self.max_records:
            fh.seek(pos)
            chunk = fh.read(min(self.CHUNK, size - pos))
            start = 0
            while len(out) < self.max_records:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    break
                line = chunk[start:nl]
                if line.strip():
                    out.append(Record(key, pos + start, pos + nl + 1, line, str(f)))
                start = nl + 1
            self._pos[key] = pos + start
            return True
        if now - since < self.ROTATION_GRACE_S:
            return True
        fh.close()
        del self._held[f]
        return False

    def _long_line(self, fh: Any, key: str, pos: int, head: bytes) -> Record | None:
        """The record of a line longer than a chunk: its head, once its newline is found (None: not yet)."""
        fh.seek(pos + len(head))
        scanned = pos + len(head)
        while block := fh.read(1 << 20):
            nl = block.find(b"\n")
            if nl >= 0:
                end = scanned + nl + 1
                log.warning("file source %s: line at byte %d is %d bytes long: dead-lettered", key, pos, end - pos)
                return Record(key, pos, end, head[: self.max_record_bytes + 1], topic=fh.name)
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
        return {}  # bytes, not records, and one per file name (unbounded labels): not a consumer_lag series

    def caught_up(self) -> bool:
        return True  # poll reads to the end of every file

    def connected(self) -> bool:
        return True

    def behind(self) -> set[str]:
        return set()  # poll reads from every file each time

    def close(self) -> None:
        for fh, *_ in self._held.values():
            fh.close()
        self._held.clear()
