#!/usr/bin/env bash
# The README's first command: set up the environment, then run rankrl's main job on the embedded default
# (no Kafka): simulated traffic -> the streamer (file source) -> the replay buffer -> one training cycle with
# the promotion gate -> the registry. Everything lands in data/ (replaced on each run).
#   scripts/run.sh              the pipeline above (a few minutes on 2 cores)
#   scripts/run.sh ARGS...      any rankrl command instead, e.g. scripts/run.sh --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
if [ $# -gt 0 ]; then
  exec rankrl "$@"
fi
rm -rf data/events.jsonl data/buffer data/models
mkdir -p data
echo "== 1/4 simulate 40,000 searches logged by the simulator's exploring logging policy" >&2
rankrl simulate --events 40000 --out data/events.jsonl --seed 0
echo "== 2/4 stream them into the replay buffer (file source; stops once caught up)" >&2
rankrl stream --source file://data/events.jsonl --buffer data/buffer --metrics-port 0 --stop-when-idle 2
echo "== 3/4 one training cycle: CQL on the older 70%, the gate on the newest 30%" >&2
rankrl train --once --buffer data/buffer --models data/models --set trainer.steps_per_cycle=500
echo "== 4/4 the result" >&2
rankrl models --models data/models
rankrl status --models data/models --buffer data/buffer
rankrl evaluate --buffer data/buffer --models data/models --candidate "$(ls data/models | grep '^v' | tail -1)" \
  --out data/results
