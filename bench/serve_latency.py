"""Latency and throughput of `rankrl serve` with decisions logged to a real Kafka broker, beside the in-process call.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python bench/serve_latency.py [--registry data/demo/models]

Starts `rankrl serve` as a child process on loopback (decisions and outcomes to fresh topics on the broker, acks=all,
idempotent), then in this process, one after the other:
  1. in-process `ServingPolicy.act` on the same registry (the baseline: what embedding the policy costs);
  2. POST /v1/rank one at a time, then open loop at --rate requests/s for --seconds (one connection; latency is
     measured from each request's scheduled send time, so a stall counts against every request behind it);
  3. POST /v1/rank/batch with 100 searches, closed loop for --seconds.
Prints p50/p99 and requests/s of each, and HTTP's added p50 over the in-process call. Bounded: stops by itself.
Without a champion in --registry both serve the default weights (the same code path, minus the forward pass).
Start a broker with `bash ci/kafka/broker.sh start` (it prints the variable to export).
"""

from __future__ import annotations

import argparse
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

from common.exploration import DirichletExploration
from deploy.registry import ModelRegistry
from deploy.serving import ServingPolicy
from rankrl.sim import RankingWorld, WorldConfig, event_states


def percentiles(xs: list[float]) -> tuple[float, float]:
    return 1e3 * float(np.median(xs)), 1e3 * float(np.percentile(xs, 99))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default="", help="a registry with a champion (default: an empty one)")
    ap.add_argument("--rate", type=float, default=500.0, help="open-loop single requests per second (500)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each HTTP phase (10)")
    ap.add_argument("--port", type=int, default=8190)
    args = ap.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("serve_latency: set KAFKA_BOOTSTRAP_SERVERS (bash ci/kafka/broker.sh start prints it)", file=sys.stderr)
        return 2
    registry = args.registry or tempfile.mkdtemp(prefix="rankrl-bench-registry-")
    world = RankingWorld(WorldConfig())
    ctx = world.contexts(2000, np.random.default_rng(0))
    bodies = [orjson.dumps({"state": st}) for st in event_states(ctx)]

    # 1. in process
    policy = ServingPolicy(ModelRegistry(registry), exploration=DirichletExploration(), auto_refresh=False)
    times = []
    for i in range(5000):
        t0 = time.perf_counter()
        policy.act(ctx.states[i % len(ctx)])
        times.append(time.perf_counter() - t0)
    rows = [("in-process ServingPolicy.act", *percentiles(times), len(times) / sum(times), len(times))]

    run = uuid.uuid4().hex[:8]
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(f"bench-{k}-{run}", num_partitions=1, replication_factor=1)
                         for k in ("decisions", "outcomes")])  # fmt: skip
    admin.close()
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
        # 2a. single, closed loop: one request in flight, what one search waits for
        lat = []
        for b in bodies[:1000]:
            t0 = time.perf_counter()
            post("/v1/rank", b)
            lat.append(time.perf_counter() - t0)
        rows.append(("POST /v1/rank, one in flight (closed loop)", *percentiles(lat), len(lat) / sum(lat), len(lat)))
        # 2b. single, open loop
        n = int(args.rate * args.seconds)
        lat, start = [], time.perf_counter()
        for i in range(n):
            due = start + i / args.rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(due - now, 0.0005))
            post("/v1/rank", bodies[i % len(bodies)])
            lat.append(time.perf_counter() - due)
        wall = time.perf_counter() - start
        rows.append((f"POST /v1/rank at {args.rate:g}/s (open loop)", *percentiles(lat), n / wall, n))
        # 3. batch of 100, closed loop
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
          f"(champion: {ModelRegistry(registry).champion() or 'none, default weights'})")  # fmt: skip
    print(f"{'path':<44} {'p50 ms':>8} {'p99 ms':>8} {'searches/s':>11} {'searches':>9}")
    for name, p50, p99, rps, count in rows:
        print(f"{name:<44} {p50:>8.3f} {p99:>8.3f} {rps:>11.0f} {count:>9}")
    print(f"HTTP and the durable Kafka write add {rows[1][1] - rows[0][1]:.3f} ms at p50 over the in-process call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
