"""Where `rankrl serve` logs decisions and outcomes: a Kafka topic, or a JSONL file on the embedded default.

A request is answered only after its record is durable: acknowledged by every in-sync replica (Kafka,
acks=all), or written and fsynced (file). A record that cannot be made durable within `serve.log_timeout_s`
fails the request with 503, so a search engine never ranks with weights nobody recorded.

The file log is a group commit: requests hand their lines to one writer thread, which appends everything waiting,
fsyncs once and answers them all, so concurrent requests share an fsync instead of queueing for one each. A
request that times out never harms the writer (its answer is simply not wanted any more).

Operations on a file log (docs/operating.md, "Rotating serve's logs"):
- one writer per file: the log holds an exclusive lock on `PATH.lock`; a second `rankrl serve` on the same file
  fails at start with a message (give each instance its own file, or use Kafka);
- rotation by move + create (logrotate's default): before each append the writer checks that PATH is still the
  file it holds, and reopens PATH when it was moved or replaced; the streamer's file source reads the moved
  file's rest before it follows the new one.

`submit` hands records to the log without waiting: serve uses it for retractions, which must follow the record
they name in the log's order but cannot wait for a log that just failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import queue
import threading
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class LogUnavailable(RuntimeError):
    """The record could not be made durable: the request must fail (503)."""


class RecordLog(Protocol):
    name: str

    async def write(self, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
        """Make (key, value) records durable, in order, or raise LogUnavailable."""

    def submit(self, records: list[tuple[bytes, bytes]]) -> None:
        """Hand records to the log, behind everything handed before, without waiting for them (best effort)."""

    def ready(self) -> bool:
        """Whether a write would succeed now: probes the log itself when the last write failed (readiness)."""

    def alive(self) -> bool:
        """False when a part of the log that cannot recover by itself has died (liveness)."""

    def close(self) -> None: ...


def _settle(fut: Future[None], error: BaseException | None = None) -> None:
    """Answer a request's future; one that was given up on (timed out, cancelled) is left alone."""
    with contextlib.suppress(InvalidStateError):
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


async def _wait(fut: Future[None], timeout_s: float, what: str) -> None:
    try:
        # shielded: giving up on the wait must not cancel the future the writer will answer
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout_s)
    except TimeoutError:
        raise LogUnavailable(f"{what}: not durable within {timeout_s:g}s") from None
    except LogUnavailable:
        raise
    except Exception as e:
        raise LogUnavailable(f"{what}: {type(e).__name__}: {e}") from None


class LogLocked(RuntimeError):
    """Another process writes this file log."""


class FileLog:
    """JSONL appended and fsynced by one writer thread (group commit), reopened when the file is rotated away."""

    def __init__(self, path: str | Path, min_free_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.name = f"file://{self.path}"
        self.min_free_bytes = min_free_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LogLocked(
                    f"{self.path} is written by another process (it holds {self.path}.lock): give each rankrl serve "
                    "its own decisions and outcomes files, or log to Kafka"
                ) from None
            raise
        self._fd = self._open()
        self._q: queue.Queue[tuple[list[bytes], Future[None]] | None] = queue.Queue()
        self._ok = True
        self._probe: Future[None] | None = None
        self.reopened = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{self.path.name}", daemon=True)
        self._thread.start()

    def _open(self) -> int:
        # unbuffered: a failed append leaves nothing behind in a buffer for close() to fail on again
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._repair_tail(fd)
        return fd

    def _repair_tail(self, fd: int) -> None:
        """A crash mid-append leaves a line without its newline: end it, so the next record starts a line (the
        reader dead-letters the torn one as not_json)."""
        size = os.lseek(fd, 0, os.SEEK_END)
        if size:
            with open(f"/proc/self/fd/{fd}", "rb") as f:  # the very file opened (the path may move meanwhile)
                f.seek(size - 1)
                last = f.read(1)
            if last != b"\n":
                self._append(fd, b"\n")

    def _follow_rotation(self) -> None:
        """Reopen PATH when the file held is no longer the one at PATH (moved away, or replaced)."""
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            at_path = None
        held = os.fstat(self._fd)
        if at_path is not None and (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino):
            return
        fd = self._open()
        os.close(self._fd)
        self._fd = fd
        self.reopened += 1
        log.warning("decision log %s was moved or replaced: writing to the file now at that path", self.path)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(nxt)
            try:
                self._write_batch(batch)
            except BaseException as e:  # never let the writer die: every later request would fail
                log.exception("decision log %s: unexpected error", self.path)
                for _, fut in batch:
                    _settle(fut, LogUnavailable(f"{self.path}: {type(e).__name__}: {e}"))

    def _write_batch(self, batch: list[tuple[list[bytes], Future[None]]]) -> None:
        try:
            self._follow_rotation()
            start = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as e:
            self._fail(batch, e)
            return
        try:
            self._append(self._fd, b"".join(line for lines, _ in batch for line in lines))
        except OSError as e:
            # leave no partial line for the next append to be glued onto (this process is the only writer)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            self._fail(batch, e)
            return
        self._ok = True
        for _, fut in batch:
            _settle(fut)

    def _fail(self, batch: list[tuple[list[bytes], Future[None]]], e: OSError) -> None:
        self._ok = False
        log.error("decision log %s: write failed: %s", self.path, e)
        for _, fut in batch:
            _settle(fut, LogUnavailable(f"{self.path}: {e}"))

    @staticmethod
    def _append(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)

    def _enqueue(self, records: list[tuple[bytes, bytes]]) -> Future[None]:
        fut: Future[None] = Future()
        self._q.put(([v + b"\n" for _, v in records], fut))
        return fut

    def submit(self, records: list[tuple[bytes, bytes]]) -> None:
        self._enqueue(records)

    async def write(self, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
        await _wait(self._enqueue(records), timeout_s, self.name)

    def ready(self) -> bool:
        if not self.alive():
            return False
        if self._ok:
            return True
        # The last write failed: probe with a real append of an empty line (JSONL readers skip blank lines) through
        # the writer, so readiness comes back when the disk does, without waiting for a request to try.
        if self._probe is None or self._probe.done():
            self._probe = self._enqueue([(b"", b"")])
        return False

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)
        os.close(self._fd)
        os.close(self._lock_fd)


class KafkaLog:
    """A topic, written with acks=all and idempotence (a retried send is not stored twice), keyed by log_id so a
    search's decision and outcomes land on one partition of their topics."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        topic: str,
        bootstrap_timeout_ms: int = 15_000,
        max_record_bytes: int = 1 << 20,
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.name = f"kafka topic {topic}"
        # room for any record serve accepts (its size is checked against max_record_bytes first) plus the batch
        # header; the topic's max.message.bytes must be at least as large (docs/operating.md)
        self.producer = KafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            bootstrap_timeout_ms=bootstrap_timeout_ms,
            max_request_size=max(1 << 20, max_record_bytes + (64 << 10)),
            **client_kwargs,
        )
        self._ok = True

    def _send_all(self, records: list[tuple[bytes, bytes]]) -> list[Any]:
        try:
            return [self.producer.send(self.topic, key=k, value=v) for k, v in records]
        except Exception as e:  # raised before sending (buffer full, no metadata): the caller retracts the batch
            raise LogUnavailable(f"{self.name}: {type(e).__name__}: {e}") from None

    def submit(self, records: list[tuple[bytes, bytes]]) -> None:
        with contextlib.suppress(LogUnavailable):
            self._send_all(records)

    async def write(self, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
        try:
            sends = self._send_all(records)
        except LogUnavailable:
            self._ok = False
            raise
        done: Future[None] = Future()
        left = [len(sends)]
        lock = threading.Lock()

        def ok(_: Any) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0 and not done.done():
                    done.set_result(None)

        def failed(e: BaseException) -> None:
            with lock:
                if not done.done():
                    done.set_exception(LogUnavailable(f"{self.name}: {type(e).__name__}: {e}"))

        for s in sends:
            s.add_callback(ok)
            s.add_errback(failed)
        try:
            await _wait(done, timeout_s, self.name)
        except LogUnavailable:
            self._ok = False
            raise
        self._ok = True

    def ready(self) -> bool:
        # bootstrap_connected() turns False once kafka-python drops the bootstrap connection (after the first
        # metadata), so it reported an idle, healthy producer as failing: ask whether the sender thread runs and
        # the cluster's brokers are known; after a failed write, whether a broker is connected again (the probe
        # that brings readiness back without a write).
        metadata = getattr(self.producer, "_metadata", None)
        brokers = metadata is None or bool(metadata.brokers())
        if not (self.alive() and brokers):
            return False
        if self._ok:
            return True
        client = getattr(self.producer, "_client", None)
        if client is None or metadata is None:
            return False
        return any(client.connected(b.nodeId) for b in metadata.brokers())

    def alive(self) -> bool:
        sender = getattr(self.producer, "_sender", None)
        return sender is None or sender.is_alive()

    def close(self) -> None:
        self.producer.close(timeout=10)
