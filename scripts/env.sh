#!/usr/bin/env bash
# Creates (once) and updates the Python environment, then prints its path. Sourced by the other scripts.
#
# The virtual environment lives outside the checkout ($RANKRL_VENV, default ~/.cache/rankrl/venv) so that every
# clone on a machine, CI's included, reuses one torch install (~3 GB from PyPI); pip skips what is installed.
# sourced by scripts that set -euo pipefail themselves
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RANKRL_VENV:-$HOME/.cache/rankrl/venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "env.sh: creating $VENV" >&2
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "rankrl needs Python >= 3.11"'
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# Re-install dependencies only when pyproject.toml changed (pip is slow to say "nothing to do").
stamp="$VENV/.rankrl-deps-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "env.sh: installing rankrl and its dependencies into $VENV (first time: several minutes for torch)" >&2
  "$VENV/bin/pip" install -q -e "$ROOT[test]"
  touch "$stamp"
fi
# The venv is shared by every checkout: point its editable `rankrl` at this one (seconds, no dependencies).
where=$("$VENV/bin/python" -c 'import os, rankrl; print(os.path.dirname(os.path.dirname(rankrl.__file__)))' 2>/dev/null || true)
if [ "$where" != "$ROOT" ]; then
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT" 2>/dev/null
fi
export PATH="$VENV/bin:$PATH"
