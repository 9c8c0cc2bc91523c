#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker+controller) from Maven Central jars, for the tests.
#
#   broker.sh fetch          download the jars into $KAFKA_LIB_DIR (skipped when already there)
#   broker.sh start          format a fresh store under $KAFKA_RUN_DIR, start, wait until ready, print env lines
#   broker.sh stop           SIGTERM, wait up to 30 s, then SIGKILL, by the recorded pid only
#   broker.sh kill           SIGKILL now, keeping the store (an outage, for the fault tests)
#   broker.sh resume         start the killed broker again on its store and ports, wait until ready
#
# Listeners: PLAINTEXT (tests), SASL_PLAINTEXT with SCRAM-SHA-256/512 users (security tests), SSL with a
# self-signed certificate for the name kafka.rankrl.test only (TLS failure tests: its PEM is $KAFKA_RUN_DIR/tls/ca.pem),
# CONTROLLER. Ports are free ones picked at start unless KAFKA_PORT / KAFKA_SASL_PORT / KAFKA_SSL_PORT /
# KAFKA_CTRL_PORT are set; the cluster id is a fresh one unless KAFKA_CLUSTER_ID is set. `start` prints
# KAFKA_BOOTSTRAP_SERVERS=..., KAFKA_SASL_BOOTSTRAP_SERVERS=..., KAFKA_SSL_BOOTSTRAP_SERVERS=..., KAFKA_SSL_CAFILE=...
# and writes them to $KAFKA_RUN_DIR/env.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_LIB_DIR="${KAFKA_LIB_DIR:-$ROOT/.cache/kafka-$KAFKA_VERSION/lib}"
KAFKA_RUN_DIR="${KAFKA_RUN_DIR:-$ROOT/.cache/kafka-run}"
# SCRAM users the security tests log in with (test-only credentials on a loopback broker).
SCRAM_USER="${KAFKA_SCRAM_USER:-rankrl}"
SCRAM_PASSWORD="${KAFKA_SCRAM_PASSWORD:-rankrl-test-secret}"

log() { echo "broker.sh: $*" >&2; }

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }

fetch() {
  if [ -f "$KAFKA_LIB_DIR/kafka_2.13-$KAFKA_VERSION.jar" ]; then
    log "jars already in $KAFKA_LIB_DIR"
    return
  fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIB_DIR"
  mvn -B -q -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB_DIR"
}

java_ok() {
  command -v java >/dev/null || return 1
  local v
  v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ -n "$v" ] && [ "$v" -ge 17 ]
}

write_config() {
  cat > "$KAFKA_RUN_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,SASL_PLAINTEXT://127.0.0.1:$SASL_PORT,SSL://127.0.0.1:$SSL_PORT,CONTROLLER://127.0.0.1:$CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,SASL_PLAINTEXT://127.0.0.1:$SASL_PORT,SSL://127.0.0.1:$SSL_PORT,CONTROLLER://127.0.0.1:$CTRL_PORT
ssl.keystore.type=PKCS12
ssl.keystore.location=$KAFKA_RUN_DIR/tls/broker.p12
ssl.keystore.password=$TLS_PASSWORD
ssl.key.password=$TLS_PASSWORD
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$KAFKA_RUN_DIR/data
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.dedupe.buffer.size=16777216
PROPS
}

# A self-signed certificate for kafka.rankrl.test (not 127.0.0.1: a client that checks the host name refuses it,
# which is what the TLS failure tests need), in a PKCS12 keystore for the broker and as PEM for clients.
TLS_PASSWORD=rankrl-test-tls
make_tls() {
  mkdir -p "$KAFKA_RUN_DIR/tls"
  keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 -dname "CN=kafka.rankrl.test" \
    -ext "SAN=dns:kafka.rankrl.test" -keystore "$KAFKA_RUN_DIR/tls/broker.p12" -storetype PKCS12 \
    -storepass "$TLS_PASSWORD" -keypass "$TLS_PASSWORD" > /dev/null 2>&1 \
    || { log "keytool could not make the test certificate"; exit 1; }
  keytool -exportcert -alias broker -keystore "$KAFKA_RUN_DIR/tls/broker.p12" -storepass "$TLS_PASSWORD" -rfc \
    -file "$KAFKA_RUN_DIR/tls/ca.pem" > /dev/null 2>&1
}

start() {
  java_ok || { log "Java 17 or newer is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
  [ -f "$KAFKA_LIB_DIR/kafka_2.13-$KAFKA_VERSION.jar" ] || { log "no jars in $KAFKA_LIB_DIR: run '$0 fetch' first"; exit 1; }
  if [ -f "$KAFKA_RUN_DIR/kafka.pid" ] && kill -0 "$(cat "$KAFKA_RUN_DIR/kafka.pid")" 2>/dev/null; then
    log "a broker is already running (pid $(cat "$KAFKA_RUN_DIR/kafka.pid")); stop it first"; exit 1
  fi
  rm -rf "$KAFKA_RUN_DIR"; mkdir -p "$KAFKA_RUN_DIR/logs"
  PORT="${KAFKA_PORT:-$(free_port)}"; SASL_PORT="${KAFKA_SASL_PORT:-$(free_port)}"; CTRL_PORT="${KAFKA_CTRL_PORT:-$(free_port)}"
  SSL_PORT="${KAFKA_SSL_PORT:-$(free_port)}"
  make_tls
  write_config
  local t0 cluster_id jvm=(java -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/log4j2.properties"
                          -Dkafka.logs.dir="$KAFKA_RUN_DIR/logs")
  t0=$(date +%s.%N)
  # Cluster id: 22-char base64url of 16 random bytes (a hyphenated uuid is rejected). One in 32 such ids starts
  # with '-', which Kafka's own generator never makes (Uuid.randomUuid) and which `-t ID` would read as an option:
  # generate like Kafka does, and pass it as --cluster-id=ID so that an id given in KAFKA_CLUSTER_ID is safe too.
  cluster_id="${KAFKA_CLUSTER_ID:-$(python3 -c '
import base64, uuid
while (i := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(i)')}"
  "${jvm[@]}" -cp "$KAFKA_LIB_DIR/*" kafka.tools.StorageTool format --standalone --cluster-id="$cluster_id" \
    -c "$KAFKA_RUN_DIR/server.properties" \
    --add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]" > "$KAFKA_RUN_DIR/logs/format.log" 2>&1 \
    || { log "format failed:"; cat "$KAFKA_RUN_DIR/logs/format.log" >&2; exit 1; }
  launch "$t0"
  {
    echo "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$PORT"
    echo "KAFKA_SASL_BOOTSTRAP_SERVERS=127.0.0.1:$SASL_PORT"
    echo "KAFKA_SCRAM_USER=$SCRAM_USER"
    echo "KAFKA_SCRAM_PASSWORD=$SCRAM_PASSWORD"
    echo "KAFKA_SSL_BOOTSTRAP_SERVERS=127.0.0.1:$SSL_PORT"
    echo "KAFKA_SSL_CAFILE=$KAFKA_RUN_DIR/tls/ca.pem"
  } | tee "$KAFKA_RUN_DIR/env"
}

starts() { local n; n=$(grep -c "Kafka Server started" "$KAFKA_RUN_DIR/logs/server.log" 2>/dev/null); echo "${n:-0}"; }

# Start the JVM on the formatted store and wait for this start's "Kafka Server started" line.
launch() {
  local t0="$1" jvm=(java -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/log4j2.properties"
                     -Dkafka.logs.dir="$KAFKA_RUN_DIR/logs")
  local before
  before=$(starts)
  # Heap: 1 GiB is plenty for tests (the stock 1G/1G; production advice of 6 GiB does not apply).
  nohup "${jvm[@]}" -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent \
    -cp "$KAFKA_LIB_DIR/*" kafka.Kafka "$KAFKA_RUN_DIR/server.properties" \
    >> "$KAFKA_RUN_DIR/logs/stdout.log" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$KAFKA_RUN_DIR/kafka.pid"
  local deadline=$(( $(date +%s) + ${KAFKA_START_TIMEOUT:-120} ))
  until [ "$(starts)" -gt "$before" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "broker exited during start-up; last lines:"
      tail -n 30 "$KAFKA_RUN_DIR/logs/server.log" "$KAFKA_RUN_DIR/logs/stdout.log" >&2 || true
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "broker not ready after ${KAFKA_START_TIMEOUT:-120}s; stopping it"; stop; exit 1
    fi
    sleep 0.2
  done
  log "ready in $(python3 -c "print(round($(date +%s.%N)-$t0,1))")s, pid $pid, logs in $KAFKA_RUN_DIR/logs"
}

kill_hard() {
  local pidfile="$KAFKA_RUN_DIR/kafka.pid"
  [ -f "$pidfile" ] || { log "no pid file in $KAFKA_RUN_DIR: nothing to kill"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
  log "killed (store kept in $KAFKA_RUN_DIR/data)"
}

resume() {
  [ -f "$KAFKA_RUN_DIR/server.properties" ] || { log "no broker was started in $KAFKA_RUN_DIR"; exit 1; }
  if [ -f "$KAFKA_RUN_DIR/kafka.pid" ] && kill -0 "$(cat "$KAFKA_RUN_DIR/kafka.pid")" 2>/dev/null; then
    log "the broker is running (pid $(cat "$KAFKA_RUN_DIR/kafka.pid"))"; return 0
  fi
  launch "$(date +%s.%N)"
}

stop() {
  local pidfile="$KAFKA_RUN_DIR/kafka.pid"
  [ -f "$pidfile" ] || { log "no pid file in $KAFKA_RUN_DIR: nothing to stop"; return 0; }
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "broker did not stop in 30s: SIGKILL"; kill -KILL "$pid" || true; fi
  fi
  rm -f "$pidfile"
  log "stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  kill) kill_hard ;;
  resume) resume ;;
  *) echo "usage: $0 fetch|start|stop|kill|resume" >&2; exit 2 ;;
esac
