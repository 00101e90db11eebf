#!/usr/bin/env bash
# The team stack on one machine, every service bound to loopback unless configured:
#   PostgreSQL (the Prefect server's database, a cluster in the stack folder),
#   the Prefect server, Redis (stage locks shared by all workers),
#   a local S3 API (moto) holding the shared artifact store (and its cache index),
#   a `process` work pool and its workers.
#
#   deployments/stack.sh up [N]     start everything, with N workers (default 2)
#   deployments/stack.sh server     start the Prefect server alone, on SQLite (no PostgreSQL,
#                                   Redis, S3 or workers): the UI and flow runs from this shell
#   deployments/stack.sh worker I   start one more worker, worker-I
#   deployments/stack.sh down       stop everything, by PID, newest first
#   deployments/stack.sh purge      down, then delete the stack's state (database, secrets, logs)
#   deployments/stack.sh restart-server   stop and start the Prefect server only (as up or server started it)
#   deployments/stack.sh status     what runs
#   deployments/stack.sh env        the client settings, for: eval "$(deployments/stack.sh env)"
#
# Clients (prefect deploy, prefect deployment run, flows/*.py) use the settings that
# `up` writes to $STACK/env:  eval "$(deployments/stack.sh env)"
# Secrets (the API's auth string, database and Redis passwords, S3 keys) are generated into
# $STACK/secrets, unless given in the environment; none is ever written to the repository.
# The API always asks for its auth string; CORS admits the UI's own origin only; CSRF
# protection is on. The process pool's job template has no `command` variable, so a flow
# run's job variables cannot make a worker run a shell command of their choosing.
# Refused: binding beyond loopback with the bundled moto S3 (it accepts any key, and its
# reset endpoint wipes the store: give a real S3 with DISTILLERY_S3_ENDPOINT), and workers
# running as root (DISTILLERY_WORKERS_AS_ROOT=1 allows it, for a disposable container).
# The UI in a browser talks to http://$DISTILLERY_PUBLIC_HOST:$DISTILLERY_PREFECT_PORT/api
# (the public host defaults to the bind address; set it when binding 0.0.0.0).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(dirname "$HERE")
STACK=${DISTILLERY_STACK_DIR:-$PROJECT/.stack}
PYTHON=${DISTILLERY_PYTHON:-$PROJECT/.venv/bin/python}
BIN=$(dirname "$PYTHON")
HOST=${DISTILLERY_BIND:-127.0.0.1}
PUBLIC_HOST=${DISTILLERY_PUBLIC_HOST:-$HOST}
PG_PORT=${DISTILLERY_PG_PORT:-54329}
PREFECT_PORT=${DISTILLERY_PREFECT_PORT:-4200}
REDIS_PORT=${DISTILLERY_REDIS_PORT:-63790}
S3_PORT=${DISTILLERY_S3_PORT:-59000}
POOL=${DISTILLERY_POOL:-distillery}
BUCKET=${DISTILLERY_BUCKET:-distillery}
PG_BIN=${DISTILLERY_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

mkdir -p "$STACK"/{logs,pids,secrets,workers}
chmod 700 "$STACK/secrets"

log() { echo "[stack $(date +%H:%M:%S)] $*" >&2; }

refuse() { echo "[stack] refused: $*" >&2; exit 2; }

loopback() { case "$HOST" in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac; }

check_exposure() {  # before anything starts: what a non-loopback bind would expose
  if ! loopback && [ -z "${DISTILLERY_S3_ENDPOINT:-}" ]; then
    refuse "DISTILLERY_BIND=$HOST exposes the bundled moto S3, which accepts any credentials and can be reset by anyone who reaches it; give a real S3 with DISTILLERY_S3_ENDPOINT (and its keys in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), or bind to 127.0.0.1"
  fi
}

check_worker_user() {
  if [ "$(id -u)" = 0 ] && [ "${DISTILLERY_WORKERS_AS_ROOT:-}" != 1 ]; then
    refuse "workers would run as root, and every flow run with them: start the stack as an unprivileged user (DISTILLERY_WORKERS_AS_ROOT=1 allows root, for a disposable container only)"
  fi
}

secret() {  # secret NAME [VALUE]: the given value, else a stored or new random one
  local file="$STACK/secrets/$1"
  if [ -n "${2:-}" ]; then printf '%s' "$2" > "$file"
  elif [ ! -s "$file" ]; then "$PYTHON" -c 'import secrets; print(secrets.token_hex(16), end="")' > "$file"; fi
  chmod 600 "$file"; cat "$file"
}

as_db_owner() {  # PostgreSQL refuses to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

running() { [ -s "$STACK/pids/$1.pid" ] && kill -0 "$(cat "$STACK/pids/$1.pid")" 2>/dev/null; }

start_bg() {  # start_bg NAME COMMAND...: run in the background, logging, PID recorded
  local name=$1; shift
  if running "$name"; then log "$name already running"; return; fi
  nohup "$@" > "$STACK/logs/$name.log" 2>&1 &
  echo $! > "$STACK/pids/$name.pid"
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$((limit * 2))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "$what did not come up within ${limit}s; see $STACK/logs"; return 1
}

http_ok() {  # with the server's auth string, when it has one
  "$PYTHON" -c '
import base64, os, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
auth = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")
if auth:
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
urllib.request.urlopen(request, timeout=2)' "$1"
}

api_auth() {  # the API's auth string: given, else generated once (user:password, as Prefect takes it)
  if [ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then printf '%s' "$PREFECT_SERVER_API_AUTH_STRING"
  else printf 'distillery:%s' "$(secret api_password)"; fi
}

write_server_env() {  # what every client needs: the server's address and auth (the server alone: no store, locks or S3)
  umask 077
  cat > "$STACK/env" <<EOF
export PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api
export PREFECT_UI_URL=http://$PUBLIC_HOST:$PREFECT_PORT
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
export DISTILLERY_PROJECT_DIR=$PROJECT
EOF
  echo "export PREFECT_API_AUTH_STRING='$(api_auth)'" >> "$STACK/env"
}

write_env() {  # the full stack: the server's settings, then the shared store, locks and S3
  local redis_password
  secret pg_password "${DISTILLERY_PG_PASSWORD:-}" > /dev/null
  redis_password=$(secret redis_password "${DISTILLERY_REDIS_PASSWORD:-}")
  write_server_env
  cat >> "$STACK/env" <<EOF
export DISTILLERY_STORE=s3://$BUCKET/store
export DISTILLERY_LOCKS=redis://:$redis_password@$HOST:$REDIS_PORT/0
export FSSPEC_S3_ENDPOINT_URL=${DISTILLERY_S3_ENDPOINT:-http://$HOST:$S3_PORT}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-$(secret s3_key)}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-$(secret s3_secret)}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
EOF
  if [ -n "${DISTILLERY_DATA:-}" ]; then echo "export DISTILLERY_DATA=$DISTILLERY_DATA" >> "$STACK/env"; fi
  # The checkout's commit, worked out when the file is sourced (so at `prefect deploy` time): each
  # deployment's version (deployments/prefect.yaml), which workers at other code refuse (flows/version.py).
  local repo
  repo=$(cd "$HERE/.." && pwd)
  echo "export DISTILLERY_CODE=\"\$(git -C '$repo' rev-parse HEAD 2>/dev/null)\$(git -C '$repo' status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo -dirty)\"" >> "$STACK/env"
}

pg_home() {
  # The cluster lives in the stack folder. PostgreSQL refuses to run as root, so as root
  # it runs as the 'postgres' user; when that user cannot reach the stack folder (a
  # private temporary folder, say), the cluster goes to its own home instead.
  if [ "$(id -u)" != 0 ] || runuser -u postgres -- test -x "$STACK" 2> /dev/null; then
    echo "$STACK/postgres"
  else
    echo "/var/lib/postgresql/distillery-$(printf %s "$STACK" | sha256sum | cut -c1-12)"
  fi
}

start_postgres() {
  local home data socket
  home=$(pg_home); data="$home/data"; socket="$home/socket"
  [ -n "$PG_BIN" ] || { log "PostgreSQL not installed: run deployments/install-services.sh"; exit 1; }
  mkdir -p "$data" "$socket"
  chmod 700 "$data"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$home"; fi
  if [ ! -s "$data/PG_VERSION" ]; then
    local pwfile; pwfile=$(mktemp); secret pg_password "${DISTILLERY_PG_PASSWORD:-}" > "$pwfile"
    if [ "$(id -u)" = 0 ]; then chown postgres "$pwfile"; fi
    as_db_owner "$PG_BIN/initdb" -D "$data" -U prefect --pwfile="$pwfile" -E UTF8 \
      --auth-host=scram-sha-256 --auth-local=scram-sha-256 > "$STACK/logs/initdb.log"
    rm -f "$pwfile"
  fi
  if as_db_owner "$PG_BIN/pg_ctl" -D "$data" status > /dev/null 2>&1; then log "postgres already running"; return; fi
  as_db_owner "$PG_BIN/pg_ctl" -D "$data" -l "$home/postgres.log" -w -t 60 start \
    -o "-c listen_addresses=$HOST -c port=$PG_PORT -c unix_socket_directories=$socket" > /dev/null
  head -n 1 "$data/postmaster.pid" > "$STACK/pids/postgres.pid"
  PGPASSWORD=$(secret pg_password) "$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U prefect -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='prefect'" | grep -q 1 ||
    PGPASSWORD=$(secret pg_password) "$PG_BIN/createdb" -h "$HOST" -p "$PG_PORT" -U prefect prefect
  log "postgres on $HOST:$PG_PORT (cluster in $data)"
}

start_server() {
  # `--port` moves the API only: the UI's own settings would still send the browser to
  # port 4200 ("Can't connect to Server API"), so they are set to this port as well.
  # The database is PostgreSQL (up) or SQLite in the server's home (server), as recorded.
  local database
  mkdir -p "$STACK/server"
  if [ -e "$STACK/server-only" ]; then database="sqlite+aiosqlite:///$STACK/server/prefect.db"
  else database="postgresql+asyncpg://prefect:$(secret pg_password)@$HOST:$PG_PORT/prefect"; fi
  PREFECT_SERVER_API_AUTH_STRING=$(api_auth); export PREFECT_SERVER_API_AUTH_STRING  # http_ok sends it too
  PREFECT_HOME="$STACK/server" \
  PREFECT_SERVER_DATABASE_CONNECTION_URL="$database" \
  PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS="http://$PUBLIC_HOST:$PREFECT_PORT" \
  PREFECT_SERVER_CSRF_PROTECTION_ENABLED=true \
  PREFECT_UI_API_URL="http://$PUBLIC_HOST:$PREFECT_PORT/api" PREFECT_UI_URL="http://$PUBLIC_HOST:$PREFECT_PORT" \
  PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_UI_ENABLED=${PREFECT_UI_ENABLED:-true} \
  start_bg server "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
  wait_until 120 "Prefect server" http_ok "http://$HOST:$PREFECT_PORT/api/health"
  log "prefect server on http://$HOST:$PREFECT_PORT"
}

start_redis() {
  start_bg redis redis-server --bind "$HOST" --port "$REDIS_PORT" --save "" --appendonly no \
    --protected-mode yes --requirepass "$(secret redis_password "${DISTILLERY_REDIS_PASSWORD:-}")"
  wait_until 30 "Redis" "$PYTHON" -c 'import os, redis; redis.Redis.from_url(os.environ["DISTILLERY_LOCKS"]).ping()'
  log "redis on $HOST:$REDIS_PORT"
}

start_s3() {
  if [ -n "${DISTILLERY_S3_ENDPOINT:-}" ]; then log "using S3 at $DISTILLERY_S3_ENDPOINT"; else
    start_bg s3 "$BIN/moto_server" -H "$HOST" -p "$S3_PORT"
    wait_until 60 "S3 (moto)" http_ok "http://$HOST:$S3_PORT/moto-api/"
    log "s3 (moto) on $HOST:$S3_PORT"
  fi
  "$PYTHON" - "$BUCKET" <<'EOF'
import sys, s3fs
fs = s3fs.S3FileSystem()
if not fs.exists(sys.argv[1]):
    fs.mkdir(sys.argv[1])
EOF
}

start_worker() {
  # Workers on one machine share its cores: each flow run gets its share of them
  # (OMP_NUM_THREADS, which torch reads at start-up), or two runs' four threads on a
  # 2-core machine run each training at a quarter of its solo speed instead of half.
  local name="worker-$1" dir="$STACK/workers/worker-$1" threads=${2:-${DISTILLERY_WORKER_THREADS:-$(nproc)}}
  mkdir -p "$dir/home"
  (cd "$dir" && PREFECT_HOME="$dir/home" OMP_NUM_THREADS="$threads" start_bg "$name" "$BIN/prefect" worker start \
      --pool "$POOL" --type process --name "$name" --limit 1)
  wait_until 60 "$name" grep -q "started" "$STACK/logs/$name.log"
  log "$name polling pool $POOL from $dir, $threads thread(s) per flow run"
}

stop_pids() {  # stop_pids NAME...: together, so a round waits for the slowest, not for each in turn
  # An idle Prefect worker ignores the first SIGTERM and ends at the second, so the
  # first round waits 1 s, the second 5 s, then SIGKILL.
  local name pids=() round signal ticks
  for name in "$@"; do
    running "$name" && pids+=("$(cat "$STACK/pids/$name.pid")")
  done
  if [ ${#pids[@]} -gt 0 ]; then
    for round in "TERM 4" "TERM 20" "KILL 20"; do
      read -r signal ticks <<< "$round"
      kill -s "$signal" "${pids[@]}" 2>/dev/null || true
      for _ in $(seq "$ticks"); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.25; done
      kill -0 "${pids[@]}" 2>/dev/null || break
    done
  fi
  for name in "$@"; do
    [ -e "$STACK/pids/$name.pid" ] && log "stopped $name ($(cat "$STACK/pids/$name.pid"))"
    rm -f "$STACK/pids/$name.pid"
  done
}

up() {
  local workers=${1:-2}
  check_exposure
  check_worker_user
  if [ -e "$STACK/server-only" ] && running server; then
    log "a server-only stack runs in $STACK: stop it first (down)"; exit 1
  fi
  rm -f "$STACK/server-only"
  write_env
  set -a; source "$STACK/env"; set +a
  start_postgres
  start_server
  start_redis
  start_s3
  "$BIN/prefect" work-pool inspect "$POOL" > /dev/null 2>&1 ||
    "$BIN/prefect" work-pool create "$POOL" --type process --base-job-template "$HERE/job-templates/process.json" > /dev/null
  log "work pool $POOL (process)"
  local threads=${DISTILLERY_WORKER_THREADS:-$(( $(nproc) / workers ))}
  [ "$threads" -ge 1 ] || threads=1
  for i in $(seq "$workers"); do start_worker "$i" "$threads"; done
  log "up; clients: source $STACK/env"
}

server_only() {
  if running server && [ ! -e "$STACK/server-only" ]; then
    log "the full stack runs in $STACK: its server is already up (status)"; exit 1
  fi
  touch "$STACK/server-only"
  write_server_env
  start_server
  log "up (server only); clients: source $STACK/env"
}

down() {
  local workers=()
  for pidfile in "$STACK"/pids/worker-*.pid; do [ -e "$pidfile" ] && workers+=("$(basename "$pidfile" .pid)"); done
  # Workers first: they report their runs' ends to the server.
  [ ${#workers[@]} -eq 0 ] || stop_pids "${workers[@]}"
  stop_pids server s3 redis
  local data; data="$(pg_home)/data"
  if [ -n "$PG_BIN" ] && [ -s "$data/postmaster.pid" ]; then
    as_db_owner "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop > /dev/null && log "stopped postgres"
  fi
  rm -f "$STACK/pids/postgres.pid"
}

status() {
  for pidfile in "$STACK"/pids/*.pid; do
    [ -e "$pidfile" ] || continue
    name=$(basename "$pidfile" .pid)
    if running "$name"; then echo "$name running (pid $(cat "$pidfile"))"; else echo "$name stopped"; fi
  done
}

case "${1:-}" in
  up) up "${2:-2}" ;;
  server) server_only ;;
  worker) check_worker_user; set -a; source "$STACK/env"; set +a; start_worker "${2:?worker number}" ;;
  down) down ;;
  purge) down; rm -rf "$(pg_home)" "$STACK" ;;
  status) status ;;
  restart-server) set -a; source "$STACK/env"; set +a; stop_pids server; start_server ;;
  env) cat "$STACK/env" ;;
  *) echo "usage: $0 up [WORKERS] | server | worker N | restart-server | down | purge | status | env" >&2; exit 2 ;;
esac
