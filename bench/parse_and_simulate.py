"""Foundation speeds: parse + validate per event, features + reward per event, simulator events per second.

python bench/parse_and_simulate.py [--events 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.features import extract_batch
from common.reward import compute_reward
from common.schema import parse_event
from rankrl.sim import RankingWorld, write_jsonl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "e.jsonl"
        t0 = time.perf_counter()
        n = write_jsonl(RankingWorld(), str(path), args.events, seed=1)
        sim = n / (time.perf_counter() - t0)
        lines = path.read_bytes().splitlines()
    size = sum(map(len, lines)) / len(lines)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for line in lines:
            parse_event(line)
        best = min(best, (time.perf_counter() - t0) / len(lines))
    events = [parse_event(line) for line in lines]
    t0 = time.perf_counter()
    for e in events:
        compute_reward(e)
    extract_batch(events)
    rest = (time.perf_counter() - t0) / len(events)
    print(f"simulator: {sim:,.0f} events/s (world built, JSON written)")
    print(f"parse + validate: {best * 1e6:.1f} us per event ({size:,.0f} bytes, best of 3)")
    print(f"reward + features: {rest * 1e6:.1f} us per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
