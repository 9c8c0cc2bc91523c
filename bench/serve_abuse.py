"""`rankrl serve` under the abuse of issue 27's table, on loopback, bounded in count and time: the memory it holds
(RSS, high-water mark) and the latency a normal client sees meanwhile.

    python bench/serve_abuse.py [--out bench/results/serve_abuse.txt]

One real `rankrl serve` (file logs in a temporary folder, default limits: 16 MiB bodies, 64 KiB heads, 10 s to
send a request, 1,000 connections). A normal client ranks one search at a time throughout; each phase runs
beside it:
  baseline      nothing else;
  chunked       3 clients each stream a 100 MiB chunked body (no content-length);
  big bodies    20 clients each send a 10 MB body at once (under the limit: read, then refused as invalid);
  huge head     3 clients each send a 32 MiB header;
  slow clients  300 connections that send half a request head and then nothing (the process has 1,024 fds);
  aborts        50 clients that announce 1 MB and hang up after 100 KB.
Per phase: the normal client's p50/p99 and failures, what the abusers got, serve's RSS after the phase and its
high-water mark so far, and the log lines the phase caused.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import original_example_event

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class NormalClient(threading.Thread):
    """Ranks one search at a time on a keep-alive connection, recording each latency (and failures)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        ev = original_example_event()
        self.body = json.dumps({"state": ev["state"], "ranking_metadata": ev["ranking_metadata"]}).encode()
        self.port = port
        self.lat: list[float] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/rank", self.body, {"content-type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
            if ok:
                self.lat.append(time.perf_counter() - t0)
            else:
                self.failed += 1
            time.sleep(0.005)

    def take(self) -> tuple[list[float], int]:
        lat, failed = self.lat, self.failed
        self.lat, self.failed = [], 0
        return lat, failed


def send(port: int, head: bytes, body_chunks: Callable[[], object] | None = None, timeout: float = 30) -> str:
    """One raw request; returns the status line (or what happened)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(head)
                if body_chunks is not None:
                    for chunk in body_chunks():  # type: ignore[attr-defined]
                        s.sendall(chunk)
            data = b""
            with contextlib.suppress(ConnectionResetError, TimeoutError):
                while b"\r\n" not in data and (chunk := s.recv(4096)):
                    data += chunk
            return data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
    except OSError as e:
        return type(e).__name__


def parallel(n: int, fn: Callable[[], str]) -> dict[str, int]:
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(fn())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {k: out.count(k) for k in sorted(set(out))}


def main() -> int:
    out_path = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else ""
    lines = ["# python bench/serve_abuse.py" + (f" --out {out_path}" if out_path else "")]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        port = free_port()
        log_path = tmp / "serve.log"
        with open(log_path, "w") as logf:
            p = subprocess.Popen(
                [sys.executable, "-m", "rankrl", "serve", "--models", str(tmp / "models"), "--port", str(port),
                 "--decisions", f"file://{tmp / 'd.jsonl'}", "--outcomes", f"file://{tmp / 'o.jsonl'}"],
                stdout=logf, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            for _ in range(300):
                with contextlib.suppress(OSError):
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                time.sleep(0.1)
            client = NormalClient(port)
            client.start()

            def chunked() -> str:
                block = b"a" * 65536
                head = (b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                        b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
                return send(port, head, lambda: (b"%x\r\n%s\r\n" % (len(block), block) for _ in range(1600)))

            def big_body() -> str:
                body = b'{"state": "' + b"x" * 10_000_000 + b'"}'
                head = (b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n" % len(body))  # fmt: skip
                return send(port, head, lambda: [body])

            def huge_head() -> str:
                return send(port, b"POST /v1/rank HTTP/1.1\r\nhost: x\r\n",
                            lambda: (b"x-junk-%d: %s\r\n" % (i, b"a" * 65536) for i in range(512)))  # fmt: skip

            def abort() -> str:
                with socket.create_connection((HOST, port), timeout=10) as s:
                    s.sendall(b"POST /v1/rank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"content-length: 1000000\r\n\r\n" + b"a" * 100_000)  # fmt: skip
                return "aborted"

            slow: list[socket.socket] = []

            def slow_clients() -> dict[str, int]:
                for _ in range(300):
                    s = socket.create_connection((HOST, port), timeout=30)
                    s.sendall(b"POST /v1/rank HTTP/1.1\r\nhost: x\r\n")
                    slow.append(s)
                got: list[str] = []
                for s in slow:
                    data = b""
                    with contextlib.suppress(OSError):
                        data = s.recv(4096)
                    got.append(data.split(b"\r\n", 1)[0].decode() or "closed")
                    s.close()
                return {k: got.count(k) for k in sorted(set(got))}

            phases: list[tuple[str, Callable[[], object]]] = [
                ("baseline", lambda: time.sleep(3) or {}),
                ("chunked 3 x 100 MiB", lambda: parallel(3, chunked)),
                ("big bodies 20 x 10 MB", lambda: parallel(20, big_body)),
                ("huge head 3 x 32 MiB", lambda: parallel(3, huge_head)),
                ("slow clients 300", slow_clients),
                ("aborts 50 x 1 MB", lambda: parallel(50, abort)),
            ]
            lines.append("phase | abusers got | normal client: n, p50 ms, p99 ms, failed | serve RSS MiB after, "
                         "high-water | log lines")  # fmt: skip
            for name, run in phases:
                before = len(log_path.read_text().splitlines())
                client.take()
                t0 = time.monotonic()
                got = run()
                time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
                lat, failed = client.take()
                now, hwm = rss(p.pid)
                ms = np.array(lat) * 1e3 if lat else np.array([np.nan])
                n_log = len(log_path.read_text().splitlines()) - before
                lines.append(f"{name} | {got} | {len(lat)}, {np.percentile(ms, 50):.2f}, {np.percentile(ms, 99):.2f}, "
                             f"{failed} | {now:.0f}, {hwm:.0f} | {n_log}")  # fmt: skip
                print(lines[-1], flush=True)
            client.stop.set()
            client.join()
        finally:
            p.terminate()
            p.wait(timeout=30)
    text = "\n".join(lines) + "\n"
    if out_path:
        Path(out_path).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
