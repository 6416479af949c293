#!/usr/bin/env bash
# Runs a local single-node Apache Kafka broker (KRaft, combined controller and
# broker) on loopback, without Docker.
#
#   deploy/local/kafka.sh up       resolve jars (cached), format storage, start, wait until it answers
#   deploy/local/kafka.sh down     stop the broker this script started, by PID
#   deploy/local/kafka.sh status   say whether a broker answers on the port
#   deploy/local/kafka.sh jars     only resolve and cache the jars
#
# Environment:
#   KAFKA_PORT            client port (default 9092); the controller listens on KAFKA_PORT+1
#   KAFKA_VERSION         org.apache.kafka:kafka_2.13 version (default pinned in deploy/kafka/pom.xml)
#   PROPAGATOR_CACHE_DIR  jar cache (default ${XDG_CACHE_HOME:-~/.cache}/propagator)
#   PROPAGATOR_STATE_DIR  data, logs and PID files (default .run/ in the repository)
#   KAFKA_HEAP            JVM heap flags (default -Xms256m -Xmx1g)
#   KAFKA_START_TIMEOUT   seconds to wait for the broker (default 120)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
pinned="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$repo/deploy/kafka/pom.xml")"
version="${KAFKA_VERSION:-$pinned}"
cache="${PROPAGATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/propagator}"
libs="$cache/kafka-$version/libs"
state="${PROPAGATOR_STATE_DIR:-$repo/.run}/kafka-$port"
pidfile="$state/broker.pid"
logfile="$state/broker.log"
timeout_s="${KAFKA_START_TIMEOUT:-120}"

log() { printf 'kafka: %s\n' "$*" >&2; }

# Sends an ApiVersions request, which every broker answers once its listener is up.
answers() {
  python3 "$here/kafka_ping.py" 127.0.0.1 "$port" >/dev/null 2>&1
}

resolve_jars() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (Debian package 'maven')"; exit 1; }
  command -v java >/dev/null || { log "java not found: install a Java 17 runtime"; exit 1; }
  log "resolving org.apache.kafka:kafka_2.13:$version from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  if ! mvn -B -Dstyle.color=never -f "$repo/deploy/kafka/pom.xml" -Dkafka.version="$version" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" >"$cache/mvn.log" 2>&1; then
    log "mvn failed; its output:"
    tail -n 40 "$cache/mvn.log" >&2
    exit 1
  fi
  log "resolved $(find "$libs" -name '*.jar' | wc -l) jars"
  touch "$libs/.complete"
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

up() {
  if answers; then
    log "reusing the broker that answers on 127.0.0.1:$port"
    return 0
  fi
  resolve_jars
  mkdir -p "$state/data"
  sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@LOG_DIR@|$state/data|g" \
    "$repo/deploy/kafka/server.properties.in" >"$state/server.properties"
  local cp="$libs/*"
  if [ ! -f "$state/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
    log "formatting KRaft storage (cluster $cluster_id)"
    java -cp "$cp" -Dlog4j2.configurationFile="$repo/deploy/kafka/log4j2.properties" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" --standalone >"$state/format.log" 2>&1 \
      || { log "formatting failed:"; cat "$state/format.log" >&2; exit 1; }
  fi
  local started
  started="$(date +%s.%N)"
  # shellcheck disable=SC2086
  nohup java ${KAFKA_HEAP:--Xms256m -Xmx1g} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$repo/deploy/kafka/log4j2.properties" \
    -cp "$cp" kafka.Kafka "$state/server.properties" >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  log "started broker PID $(cat "$pidfile"), log $logfile"
  local deadline=$(( $(date +%s) + timeout_s ))
  until answers && grep -q "Kafka Server started" "$logfile"; do
    if ! running_pid >/dev/null; then
      log "the broker exited during start-up; last lines of its log:"
      tail -n 30 "$logfile" >&2
      exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "the broker did not answer within ${timeout_s}s; last lines of its log:"
      tail -n 30 "$logfile" >&2
      exit 1
    fi
    sleep 0.2
  done
  log "broker answers on 127.0.0.1:$port after $(python3 -c "import time;print(f'{time.time()-$started:.1f}')")s"
}

down() {
  local pid
  if ! pid="$(running_pid)"; then
    log "no broker started by this script is running on port $port"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  local deadline=$(( $(date +%s) + 60 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "broker PID $pid did not stop within 60s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
  log "stopped broker PID $pid"
}

status() {
  if answers; then log "a broker answers on 127.0.0.1:$port"; else log "no broker answers on 127.0.0.1:$port"; return 1; fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  jars) resolve_jars; echo "$libs" ;;
  *) echo "usage: $0 {up|down|status|jars}" >&2; exit 2 ;;
esac
