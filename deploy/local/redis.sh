#!/usr/bin/env bash
# Runs a local redis-server on loopback, installing Debian's package when it is missing.
#
#   deploy/local/redis.sh up       start (or reuse a server that answers PING) and wait for PONG
#   deploy/local/redis.sh down     stop the server this script started, by PID
#   deploy/local/redis.sh status   say whether a server answers on the port
#
# Environment:
#   REDIS_PORT            port (default 6379)
#   PROPAGATOR_STATE_DIR  data, logs and PID files (default .run/ in the repository)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${REDIS_PORT:-6379}"
state="${PROPAGATOR_STATE_DIR:-$repo/.run}/redis-$port"
pidfile="$state/redis.pid"

log() { printf 'redis: %s\n' "$*" >&2; }

answers() {
  [ "$(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null)" = "PONG" ]
}

install() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then return 0; fi
  log "redis-server is missing: installing Debian's redis-server package"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
}

up() {
  install
  if answers; then
    log "reusing the server that answers on 127.0.0.1:$port"
    return 0
  fi
  mkdir -p "$state"
  # Append-only persistence, so a restarted server still holds the denylist.
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
    --pidfile "$pidfile" --logfile "$state/redis.log" --dir "$state" \
    --appendonly yes --appendfsync everysec --save ""
  local deadline=$(( $(date +%s) + 30 ))
  until answers; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "redis-server did not answer within 30s; last lines of its log:"
      tail -n 20 "$state/redis.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  log "server answers on 127.0.0.1:$port (PID $(cat "$pidfile"))"
}

down() {
  if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "no server started by this script is running on port $port"
    return 0
  fi
  local pid
  pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  local deadline=$(( $(date +%s) + 30 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.1
  done
  log "stopped server PID $pid"
}

status() {
  if answers; then log "a server answers on 127.0.0.1:$port"; else log "no server answers on 127.0.0.1:$port"; return 1; fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 {up|down|status}" >&2; exit 2 ;;
esac
