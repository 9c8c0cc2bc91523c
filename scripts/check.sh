#!/usr/bin/env bash
# Lint, format check and types, as `make test` runs them first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh
echo "== ruff" >&2
ruff check .
ruff format --check .
echo "== mypy" >&2
mypy
