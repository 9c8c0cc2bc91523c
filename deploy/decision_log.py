"""Where `rankrl serve` logs decisions and outcomes: a Kafka topic, or a JSONL file on the embedded default.

A request is answered only after its record is durable: acknowledged by every in-sync replica (Kafka,
acks=all), or written and fsynced (file). A record that cannot be made durable within `serve.log_timeout_s`
fails the request with 503, so a search engine never ranks with weights nobody recorded.

The file log is a group commit: requests hand their lines to one writer thread, which appends everything waiting,
fsyncs once and answers them all, so concurrent requests share an fsync instead of queueing for one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class LogUnavailable(RuntimeError):
    """The record could not be made durable: the request must fail (503)."""


class RecordLog(Protocol):
    name: str

    async def write(self, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
        """Make (key, value) records durable, in order, or raise LogUnavailable."""

    def ready(self) -> bool:
        """False while the log is known to be failing (readiness)."""

    def close(self) -> None: ...


async def _wait(fut: Future[None], timeout_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(asyncio.wrap_future(fut), timeout_s)
    except TimeoutError:
        raise LogUnavailable(f"{what}: not durable within {timeout_s:g}s") from None
    except LogUnavailable:
        raise
    except Exception as e:
        raise LogUnavailable(f"{what}: {type(e).__name__}: {e}") from None


class FileLog:
    """JSONL appended and fsynced by one writer thread (group commit)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"file://{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # unbuffered: a failed append leaves nothing behind in a buffer for close() to fail on again
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._repair_tail()
        self._q: queue.Queue[tuple[list[bytes], Future[None]] | None] = queue.Queue()
        self._ok = True
        self._thread = threading.Thread(target=self._run, name=f"log-{self.path.name}", daemon=True)
        self._thread.start()

    def _repair_tail(self) -> None:
        """A crash mid-append leaves a line without its newline: end it, so the next record starts a line (the
        reader dead-letters the torn one as not_json)."""
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._append(b"\n")

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
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                self._append(b"".join(line for lines, _ in batch for line in lines))
            except OSError as e:
                self._ok = False
                log.error("decision log %s: write failed: %s", self.path, e)
                with contextlib.suppress(OSError):  # leave no partial line for the next append to be glued onto
                    os.ftruncate(self._fd, start)
                for _, fut in batch:
                    fut.set_exception(LogUnavailable(f"{self.path}: {e}"))
                continue
            self._ok = True
            for _, fut in batch:
                fut.set_result(None)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)

    async def write(self, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
        fut: Future[None] = Future()
        self._q.put(([v + b"\n" for _, v in records], fut))
        await _wait(fut, timeout_s, self.name)

    def ready(self) -> bool:
        return self._ok and self._thread.is_alive()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)
        os.close(self._fd)


class KafkaLog:
    """A topic, written with acks=all and idempotence (a retried send is not stored twice), keyed by log_id so a
    search's decision and outcomes land on one partition of their topics."""

    def __init__(self, client_kwargs: dict[str, Any], topic: str, bootstrap_timeout_ms: int = 15_000) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.name = f"kafka topic {topic}"
        self.producer = KafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            bootstrap_timeout_ms=bootstrap_timeout_ms,
            **client_kwargs,
        )
        self._ok = True

    async def write(self, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
        sends = [self.producer.send(self.topic, key=k, value=v) for k, v in records]
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
        # the cluster's brokers are known; a failed write (self._ok) covers an unreachable broker.
        sender = getattr(self.producer, "_sender", None)
        metadata = getattr(self.producer, "_metadata", None)
        alive = sender is None or sender.is_alive()
        brokers = metadata is None or bool(metadata.brokers())
        return self._ok and alive and brokers

    def close(self) -> None:
        self.producer.close(timeout=10)
