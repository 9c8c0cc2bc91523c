#!/usr/bin/env bash
# The fast tier: pure code and the CLI on tiny data; no Kafka, Prometheus, other tools or slow tests (see the markers in
# pyproject.toml). Needs neither root nor Java.   scripts/unit.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
python -m pytest -m "not kafka and not prometheus and not slow and not tools" "$@"
