#!/usr/bin/env bash
# storm.sh: the live-shift storm against mesgate (real Redis, mes-sim with production-like
# latencies, MVCC reads), then against nginx proxy_cache (loadtest/nginx/storm.conf: 10 s
# validity, proxy_cache_lock) in front of a fresh simulator, then against a fresh simulator
# directly (no cache). Prints one markdown table: stale reads (must be 0 through mesgate)
# and the upstream load the operators' reads caused. Everything talks to 127.0.0.1 only and
# stops by itself.
#
# Knobs: DURATION=30s READERS=32 CHANGES=10 CREATES=3 BUILD=1
#        SHOW_STALE=5 (stale reads described on stderr, per target)
#        GW_PORT=18180 SIM_PORT=19190 REDIS_PORT=16390
#        NGINX=1 (0: leave nginx out)  NGINX_PORT=18181  NGINX_VALID=10s  NGINX_BIN=nginx
#        NGINX_INSTALL (1: apt-get install nginx-light when missing, as root; default 1
#        when CI=true, else 0: a missing nginx is skipped with a loud note)
set -euo pipefail

DURATION=${DURATION:-30s}
READERS=${READERS:-32}
CHANGES=${CHANGES:-10}
CREATES=${CREATES:-3}
BUILD=${BUILD:-1}
SHOW_STALE=${SHOW_STALE:-5}
GW_PORT=${GW_PORT:-18180}
SIM_PORT=${SIM_PORT:-19190}
REDIS_PORT=${REDIS_PORT:-16390}
NGINX=${NGINX:-1}
NGINX_PORT=${NGINX_PORT:-18181}
NGINX_VALID=${NGINX_VALID:-10s}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "storm: $*" >&2; exit 1; }
command -v redis-server >/dev/null || die "install redis-server (apt-get install -y redis-server)"
[[ "$NGINX_VALID" =~ ^[0-9]+[smh]$ ]] || die "NGINX_VALID: an nginx time such as 10s"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/storm.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    # Bounded wait, then force.
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=loadtest/nginx/lib.sh
source "$ROOT/loadtest/nginx/lib.sh"
NGINX_SKIPPED=
if [[ "$NGINX" != 1 ]]; then
  NGINX_SKIPPED="left out on purpose (NGINX=$NGINX)"
elif ! nginx_find storm; then
  NGINX_SKIPPED="SKIPPED: nginx not installed (apt-get install -y nginx-light)"
fi

if [ "$BUILD" = 1 ]; then
  cargo build --release --locked --bin mesgate --bin mes-sim --example storm >&2
fi
BIN=target/release

# Something else answering on one of our ports would be measured instead of our servers.
for p in "$GW_PORT" "$SIM_PORT" "$REDIS_PORT" "$NGINX_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "something already listens on 127.0.0.1:$p"; fi
done

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  die "nothing listens on $1"
}

# stop PID: stops one of our servers now (bounded), so the next target starts on a quiet box.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${pids[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]}")
}

start_sim() {
  "$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
  sim_pid=$!; pids+=("$sim_pid"); wait_port "$SIM_PORT"
}

# run_storm URL LABEL NAME: the storm against URL, its table in $TMP/NAME.md. In the
# background and waited for, so that a signal reaches the trap at once.
run_storm() {
  local p
  "$BIN/examples/storm" --gateway "$1" --label "$2" --sim "http://127.0.0.1:$SIM_PORT" \
    --duration "$DURATION" --readers "$READERS" \
    --changes-per-sec "$CHANGES" --creates-per-sec "$CREATES" --show-stale "$SHOW_STALE" \
    >"$TMP/$3.md" &
  p=$!; pids+=("$p")
  wait "$p" || die "the storm against $2 failed"
  stop "$p"
}

echo "## storm: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo -)$([[ -n "$(git status --porcelain --untracked-files=no -- src mes-sim Cargo.toml Cargo.lock examples 2>/dev/null)" ]] && echo +dirty), $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')"
echo "DURATION=$DURATION READERS=$READERS CHANGES=$CHANGES/s CREATES=$CREATES/s; mes-sim default latencies (list 20ms + 20us/row, detail 5ms, counts 150ms), MVCC on; a fresh simulator per target"
if [[ -z "$NGINX_SKIPPED" ]]; then
  echo "nginx: $NGINX_VERSION, loadtest/nginx/storm.conf: proxy_cache_valid 200 $NGINX_VALID, proxy_cache_lock on, worker_processes auto"
fi
echo

# 1. Through mesgate (L1 + Redis).
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
redis_pid=$!; pids+=("$redis_pid"); wait_port "$REDIS_PORT"
start_sim
MESGATE_LISTEN="127.0.0.1:$GW_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
MESGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" MESGATE_ADMIN_LISTEN="" RUST_LOG=warn \
  "$BIN/mesgate" --config config/mesgate.toml >/dev/null 2>&1 &
gw_pid=$!; pids+=("$gw_pid"); wait_port "$GW_PORT"
run_storm "http://127.0.0.1:$GW_PORT" "mesgate (L1 + Redis)" gateway
stop "$gw_pid"; stop "$redis_pid"; stop "$sim_pid"

# 2. nginx proxy_cache in front of a fresh simulator: writes pass through (nginx caches
# GET and HEAD only), nothing invalidates the cached lists.
if [[ -z "$NGINX_SKIPPED" ]]; then
  start_sim
  mkdir -p "$TMP/nginx"
  nginx_render storm.conf "$TMP/nginx/nginx.conf" "$TMP/nginx" "$NGINX_PORT" \
    "127.0.0.1:$SIM_PORT" "$NGINX_VALID"
  "$NGINX_BIN" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
    >"$TMP/nginx.out" 2>"$TMP/nginx.log" &
  nginx_pid=$!; pids+=("$nginx_pid"); wait_port "$NGINX_PORT"
  run_storm "http://127.0.0.1:$NGINX_PORT" "nginx proxy_cache ($NGINX_VALID)" nginx
  stop "$nginx_pid"; stop "$sim_pid"
else
  echo "| nginx proxy_cache: $NGINX_SKIPPED | | | | | | | | | | | | | | |" >"$TMP/nginx.md"
fi

# 3. Straight at a fresh simulator: the load the MES takes without a cache.
start_sim
run_storm "http://127.0.0.1:$SIM_PORT" "MES directly" direct
stop "$sim_pid"

cat "$TMP/gateway.md"
tail -n 1 "$TMP/nginx.md"
tail -n 1 "$TMP/direct.md"
