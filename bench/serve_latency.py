"""Latency and throughput of `rankrl serve` with decisions logged to a real Kafka broker, beside the in-process call.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python bench/serve_latency.py [--registry data/demo/models]

Starts `rankrl serve` as a child process on loopback (decisions and outcomes to fresh topics on the broker, acks=all,
idempotent), then in this process, one after the other:
  1. in-process `ServingPolicy.act` on the same registry (what embedding the policy costs, nothing logged);
  2. in-process `act` plus the durable write of its decision through the same `KafkaLog` serve uses (what an
     embedded policy that logs its decisions, as learning needs, costs): the floor the HTTP hop is measured from;
  3. POST /v1/rank one at a time (closed loop: what one search waits for when nothing else runs);
  4. POST /v1/rank open loop at --rate requests/s for --seconds: each request is sent at its scheduled time on a
     free keep-alive connection (a pool of up to --connections), latency counted from that scheduled time, so a
     stall counts against every request behind it (no coordinated omission); the client runs on uvloop, so
     that its own scheduling adds as little as it can to what is measured;
  5. POST /v1/rank/batch with 100 searches, closed loop for --seconds.
Prints p50/p99 and searches/s of each, and what HTTP adds at p50 over 1 and over 2. Bounded: stops by itself.
Without --registry it trains a small champion first (rankrl/sim/registry.py, ~20 s), so the forward pass is real.
Start a broker with `bash ci/kafka/broker.sh start` (it prints the variable to export).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import numpy as np
import orjson
import uvloop

from common.exploration import DirichletExploration
from deploy.registry import ModelRegistry
from deploy.serving import ServingPolicy
from rankrl.sim import RankingWorld, WorldConfig, event_states


def percentiles(xs: list[float]) -> tuple[float, float]:
    return 1e3 * float(np.median(xs)), 1e3 * float(np.percentile(xs, 99))


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, connections: int) -> list[float]:
    """POST /v1/rank at `rate`/s: request i is due at start + i/rate and goes out on a free keep-alive connection
    (a new one while fewer than `connections` are open, else it waits for one); its latency runs from its due time."""
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = 0
    lat: list[float] = []

    async def one(body: bytes, due: float) -> None:
        nonlocal opened
        if free.empty() and opened < connections:
            opened += 1
            conn = await asyncio.open_connection("127.0.0.1", port)
        else:
            conn = await free.get()
        reader, writer = conn
        writer.write(b"POST /v1/rank HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/v1/rank: {head.splitlines()[0]!r}")
        length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        lat.append(time.perf_counter() - due)
        free.put_nowait(conn)

    n = int(rate * seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], due)))
    await asyncio.gather(*tasks)
    while not free.empty():
        free.get_nowait()[1].close()
    return lat


def rank_buckets(port: int) -> dict[float, float]:
    """rankrl serve's own histogram of /v1/rank durations: upper bound in seconds -> cumulative count."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        float(s.labels["le"]): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "rankrl_serve_request_duration_seconds_bucket" and s.labels["endpoint"] == "rank"
    }


async def log_and_act(policy: ServingPolicy, states: np.ndarray, bootstrap: str, topic: str, n: int) -> list[float]:
    """In-process act plus the decision's durable write through serve's own KafkaLog, one at a time."""
    from common.config import load_config
    from common.decisions import Decision, encode, iso_now
    from common.schema import Action
    from deploy.service import open_log

    klog = open_log(f"kafka://{bootstrap}/{topic}", load_config(environ={}))
    times = []
    try:
        for i in range(n + 200):  # the first 200 warm the connection and the topic's metadata
            t0 = time.perf_counter()
            w, lp = policy.act(states[i % len(states)])
            d = Decision(uuid.uuid4().hex, iso_now(), {}, Action(*map(float, w)), lp, str(policy.version))
            await klog.write([(d.log_id.encode(), encode(d))], 5.0)
            if i >= 200:
                times.append(time.perf_counter() - t0)
    finally:
        klog.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default="", help="a registry with a champion (default: train a small one)")
    ap.add_argument("--rate", type=float, default=500.0, help="open-loop single requests per second (500)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each HTTP phase (10)")
    ap.add_argument("--connections", type=int, default=32, help="open loop: most connections at once (32)")
    ap.add_argument("--port", type=int, default=8190)
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("serve_latency: set KAFKA_BOOTSTRAP_SERVERS (bash ci/kafka/broker.sh start prints it)", file=sys.stderr)
        return 2
    if args.registry:
        registry = args.registry
    else:
        from rankrl.sim.registry import trained_registry

        print("serve_latency: training a small champion (no --registry)", file=sys.stderr)
        registry = str(trained_registry(tempfile.mkdtemp(prefix="rankrl-bench-"), promote=True))
    world = RankingWorld(WorldConfig())
    ctx = world.contexts(2000, np.random.default_rng(0))
    bodies = [orjson.dumps({"state": st}) for st in event_states(ctx)]
    import torch

    torch.set_num_threads(1)  # as serve does

    run = uuid.uuid4().hex[:8]
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(f"bench-{k}-{run}", num_partitions=1, replication_factor=1)
                         for k in ("decisions", "outcomes", "inprocess")])  # fmt: skip
    admin.close()

    # 1, 2. in process
    policy = ServingPolicy(ModelRegistry(registry), exploration=DirichletExploration(), auto_refresh=False)
    times = []
    for i in range(5000):
        t0 = time.perf_counter()
        policy.act(ctx.states[i % len(ctx)])
        times.append(time.perf_counter() - t0)
    rows = [("in-process ServingPolicy.act", *percentiles(times), len(times) / sum(times), len(times))]
    times = asyncio.run(log_and_act(policy, ctx.states, bootstrap, f"bench-inprocess-{run}", 1000))
    rows.append(("in-process act + KafkaLog.write", *percentiles(times), len(times) / sum(times), len(times)))

    cmd = [sys.executable, "-m", "rankrl", "serve", "--port", str(args.port),
           "--decisions", f"kafka://{bootstrap}/bench-decisions-{run}",
           "--outcomes", f"kafka://{bootstrap}/bench-outcomes-{run}",
           "--set", f"paths.registry_dir={registry}"]  # fmt: skip
    serve = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or serve.poll() is not None:
                print("serve_latency: rankrl serve did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.3)
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)

        def post(path: str, body: bytes) -> None:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}")

        for b in bodies[:200]:  # warm-up: connection, topic metadata, first produce
            post("/v1/rank", b)
        # 3. single, closed loop: one request in flight, what one search waits for
        lat = []
        for b in bodies[:1000]:
            t0 = time.perf_counter()
            post("/v1/rank", b)
            lat.append(time.perf_counter() - t0)
        rows.append(("POST /v1/rank, one in flight (closed loop)", *percentiles(lat), len(lat) / sum(lat), len(lat)))
        # 4. single, open loop; the server's own histogram says how much of the time was spent inside it
        before, start = rank_buckets(args.port), time.perf_counter()
        lat = uvloop.run(open_loop(args.port, bodies, args.rate, args.seconds, args.connections))
        wall = time.perf_counter() - start
        after = rank_buckets(args.port)
        inside = {le: (after[le] - before[le]) / (after[float("inf")] - before[float("inf")]) for le in after}
        rows.append((f"POST /v1/rank at {args.rate:g}/s (open loop)", *percentiles(lat), len(lat) / wall, len(lat)))
        # 5. batch of 100, closed loop (a new connection: uvicorn closed the idle one after its 5 s keep-alive)
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
        batches = [orjson.dumps({"requests": [orjson.loads(b) for b in bodies[i : i + 100]]})
                   for i in range(0, len(bodies), 100)]  # fmt: skip
        lat, start, i = [], time.perf_counter(), 0
        while time.perf_counter() - start < args.seconds:
            t0 = time.perf_counter()
            post("/v1/rank/batch", batches[i % len(batches)])
            lat.append(time.perf_counter() - t0)
            i += 1
        wall = time.perf_counter() - start
        rows.append(("POST /v1/rank/batch x100 (closed loop)", *percentiles(lat), 100 * i / wall, 100 * i))
    finally:
        serve.terminate()
        serve.wait(30)

    print(f"rankrl serve latency, decisions to Kafka at {bootstrap}; registry {registry} "
          f"(champion: {ModelRegistry(registry).champion()})")  # fmt: skip
    print(f"{'path':<44} {'p50 ms':>8} {'p99 ms':>8} {'searches/s':>11} {'searches':>9}")
    for name, p50, p99, rps, count in rows:
        print(f"{name:<44} {p50:>8.3f} {p99:>8.3f} {rps:>11.0f} {count:>9}")
    print(
        f"HTTP adds {rows[2][1] - rows[1][1]:.3f} ms at p50 over the in-process act + durable write; HTTP and the "
        f"durable write add {rows[2][1] - rows[0][1]:.3f} ms over the bare in-process act"
    )
    within = ", ".join(f"{100 * inside[le]:.1f}% within {1e3 * le:g} ms" for le in (0.0025, 0.005, 0.01))
    print(f"open loop, as rankrl serve timed itself (request read to response written): {within}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
