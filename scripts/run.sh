#!/usr/bin/env bash
# The README's first command: set up the environment, then run rankrl's main job on the embedded default (no
# Kafka): `rankrl demo` — simulated history and live traffic -> the streamer (file source) -> the replay buffer ->
# the scheduled trainer (CQL, the promotion gate, the registry) -> the champion serves the live traffic.
# Everything lands in data/demo/ (replaced on each run).
#   scripts/run.sh              the demo (5 minutes)
#   scripts/run.sh ARGS...      any rankrl command instead, e.g. scripts/run.sh demo --minutes 10, scripts/run.sh --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
if [ $# -gt 0 ]; then
  exec rankrl "$@"
fi
exec rankrl demo --dir data/demo
