#!/usr/bin/env bash
# `make run`: the ingest service and one worker in the foreground until Ctrl-C.
# Expects the virtualenv and the local Kafka and Redis (make run prepares both).
#
# The WorkOS webhook secret comes from WORKOS_WEBHOOK_SECRET when set; otherwise a
# development secret is generated once and kept in .run/workos-secret.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
state="${PROPAGATOR_STATE_DIR:-$repo/.run}"
mkdir -p "$state"
secret_file="$state/workos-secret"

umask 077
if [ -n "${WORKOS_WEBHOOK_SECRET:-}" ]; then
  printf '%s\n' "$WORKOS_WEBHOOK_SECRET" >"$secret_file"
  echo "run: using the WorkOS webhook secret from WORKOS_WEBHOOK_SECRET"
elif [ ! -s "$secret_file" ] || [ ! -f "$state/workos-secret.generated" ]; then
  python3 -c 'import secrets; print("whsec_dev_" + secrets.token_urlsafe(24))' >"$secret_file"
  touch "$state/workos-secret.generated"
  echo "run: generated a development WorkOS webhook secret: $(cat "$secret_file")"
else
  echo "run: using the development WorkOS webhook secret: $(cat "$secret_file")"
fi
umask 022

export PROPAGATOR_WORKOS__SECRET_FILE="$secret_file"
export PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS="${PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export PROPAGATOR_REDIS__URL="${PROPAGATOR_REDIS__URL:-redis://127.0.0.1:${REDIS_PORT:-6379}/0}"
port="${PROPAGATOR_INGEST__PORT:-8080}"

pids=()
stop() {
  trap - INT TERM
  echo
  echo "run: stopping ingest and worker"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  exit 0
}
trap stop INT TERM

.venv/bin/propagator ingest &
pids+=($!)
.venv/bin/propagator worker &
pids+=($!)

deadline=$(( $(date +%s) + 60 ))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" 2>/dev/null)" = "200" ]; do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run: a process exited during start-up" >&2; stop; }
  done
  if [ "$(date +%s)" -ge "$deadline" ]; then echo "run: ingest not ready after 60s" >&2; stop; fi
  sleep 0.2
done

cat <<MSG

run: ingest listens on http://127.0.0.1:$port/webhooks/workos; the worker writes the Redis denylist.
run: in another terminal, send a signed sample session.revoked and see the Redis key it produced:

    cd $repo && PROPAGATOR_WORKOS__SECRET_FILE=$secret_file PROPAGATOR_INGEST__PORT=$port PROPAGATOR_REDIS__URL=$PROPAGATOR_REDIS__URL .venv/bin/propagator send-sample

run: Ctrl-C stops ingest and worker (Kafka and Redis keep running; make services-down stops them).

MSG
wait "${pids[@]}"
