#!/usr/bin/env bash
# The README's first command: set up the environment, then run rankrl on the embedded default (no Kafka).
#   scripts/run.sh [rankrl args...]     (default: simulate 10,000 searches into data/events.jsonl)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
if [ $# -eq 0 ]; then
  mkdir -p data
  set -- simulate --events 10000 --out data/events.jsonl
fi
exec rankrl "$@"
