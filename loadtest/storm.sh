#!/usr/bin/env bash
# storm.sh: the live-shift storm against mesgate (real Redis, mes-sim with production-like
# latencies, MVCC reads) and, for comparison, against the simulator directly (no cache).
# Prints one markdown table: stale reads (must be 0 through mesgate) and the upstream load
# the operators' reads caused. Everything talks to 127.0.0.1 only and stops by itself.
#
# Knobs: DURATION=30s READERS=32 CHANGES=10 CREATES=3 BUILD=1
#        GW_PORT=18180 SIM_PORT=19190 REDIS_PORT=16390
set -euo pipefail

DURATION=${DURATION:-30s}
READERS=${READERS:-32}
CHANGES=${CHANGES:-10}
CREATES=${CREATES:-3}
BUILD=${BUILD:-1}
GW_PORT=${GW_PORT:-18180}
SIM_PORT=${SIM_PORT:-19190}
REDIS_PORT=${REDIS_PORT:-16390}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v redis-server >/dev/null || { echo "storm: install redis-server (apt-get install -y redis-server)" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

if [ "$BUILD" = 1 ]; then
  cargo build --release --locked --bin mesgate --bin mes-sim --example storm >&2
fi
BIN=target/release

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "storm: nothing listens on $1" >&2; exit 1
}

start_sim() {
  "$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
  sim_pid=$!; pids+=("$sim_pid"); wait_port "$SIM_PORT"
}

run_storm() {
  "$BIN/examples/storm" --gateway "$1" --sim "http://127.0.0.1:$SIM_PORT" \
    --duration "$DURATION" --readers "$READERS" \
    --changes-per-sec "$CHANGES" --creates-per-sec "$CREATES"
}

echo "## storm: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo -), $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')"
echo "DURATION=$DURATION READERS=$READERS CHANGES=$CHANGES/s CREATES=$CREATES/s; mes-sim default latencies (list 20ms + 20us/row, detail 5ms, counts 150ms), MVCC on"
echo

# 1. Through mesgate (L1 + Redis).
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pids+=("$!"); wait_port "$REDIS_PORT"
start_sim
MESGATE_LISTEN="127.0.0.1:$GW_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
MESGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" MESGATE_ADMIN_LISTEN="" RUST_LOG=warn \
  "$BIN/mesgate" --config config/mesgate.toml >/dev/null 2>&1 &
pids+=("$!"); wait_port "$GW_PORT"
gw_table=$(run_storm "http://127.0.0.1:$GW_PORT")
kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true

# 2. Straight at a fresh simulator: the load the MES takes without a cache.
start_sim
direct_table=$(run_storm "http://127.0.0.1:$SIM_PORT")

echo "$gw_table"
echo "$direct_table" | tail -n 1
