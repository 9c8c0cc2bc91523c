#!/usr/bin/env bash
# The whole test suite, as CI runs it: environment, lint, types, a real Kafka broker, pytest.
#   scripts/test.sh [pytest args...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v promtool >/dev/null || need_apt+=(prometheus)  # promtool + a real server for the scrape test
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)  # amtool check-config (compose's Alertmanager)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)  # verify and security of the unit files
command -v keytool >/dev/null || need_apt+=(openjdk-17-jre-headless)  # the test broker's TLS certificate
command -v go >/dev/null || need_apt+=(golang-go)  # fetches the Compose specification's schema once (go mod download)
if [ ${#need_apt[@]} -gt 0 ]; then
  line="apt-get update && apt-get install -y --no-install-recommends ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: the full suite needs ${need_apt[*]} (Debian packages). As root, run:" >&2
    echo "  $line" >&2
    echo "(make unit runs the fast tier without them.)" >&2
    exit 2
  fi
  echo "test.sh: installing ${need_apt[*]} (Debian packages)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

scripts/check.sh

echo "== kafka" >&2
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  ci/kafka/broker.sh fetch
  export KAFKA_RUN_DIR="$ROOT/.cache/kafka-run"
  trap 'ci/kafka/broker.sh stop' EXIT
  eval "$(ci/kafka/broker.sh start | sed 's/^/export /')"
fi

echo "== pytest" >&2
python -m pytest "$@"
