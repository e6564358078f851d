#!/usr/bin/env bash
# events-bench.sh: N subscribers of GET /mesgate/events on one mesgate instance (release
# build, real Redis, mes-sim with its default latencies), W status changes per second sent
# through the gateway for D seconds. Prints one markdown table: write-acknowledged →
# event-received latency over every delivery (p50/p99/max), deliveries received against
# expected, subscribers dropped, mesgate's memory per subscriber and CPU. Everything
# talks to 127.0.0.1 only and stops by itself.
#
# Knobs: SUBSCRIBERS=10000 WRITES=10 (per second) DURATION=30s BUILD=1 ASYNC=0
#        (1: the writes are sent with Prefer: respond-async, the acknowledgement is the 202)
#        BIN=target/release (where mesgate, mes-sim and examples/sse_subscribers are: a copy
#        of other binaries, for an A/B comparison; BUILD=0 with it)
#        GW_PORT=18380 ADMIN_PORT=18381 SIM_PORT=19390 REDIS_PORT=16690
set -euo pipefail

SUBSCRIBERS=${SUBSCRIBERS:-10000}
WRITES=${WRITES:-10}
DURATION=${DURATION:-30s}
BUILD=${BUILD:-1}
ASYNC=${ASYNC:-0}
GW_PORT=${GW_PORT:-18380}
ADMIN_PORT=${ADMIN_PORT:-18381}
SIM_PORT=${SIM_PORT:-19390}
REDIS_PORT=${REDIS_PORT:-16690}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "events-bench: $*" >&2; exit 1; }
command -v redis-server >/dev/null || die "install redis-server (apt-get install -y redis-server)"
command -v curl >/dev/null || die "install curl (apt-get install -y curl)"
[[ "$SUBSCRIBERS" =~ ^[0-9]+$ && "$SUBSCRIBERS" -gt 0 ]] || die "SUBSCRIBERS: a positive number"

# One descriptor per subscriber on each side (mesgate and the client), plus room.
need=$((SUBSCRIBERS + 2048))
hard=$(ulimit -Hn)
if [[ "$hard" != unlimited && "$hard" -lt "$need" ]]; then
  die "ulimit -Hn is $hard; $SUBSCRIBERS subscribers need $need (raise the hard limit)"
fi
ulimit -n "$need"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/events-bench.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
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

if [ "$BUILD" = 1 ]; then
  cargo build --release --locked --bin mesgate --bin mes-sim --example sse_subscribers >&2
fi
BIN=${BIN:-target/release}

# Something else answering on one of our ports would be measured instead of our servers.
for p in "$GW_PORT" "$ADMIN_PORT" "$SIM_PORT" "$REDIS_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "something already listens on 127.0.0.1:$p"; fi
done

wait_port() {
  for _ in $(seq 1 400); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  die "nothing listens on $1"
}

# The shipped config, with room for the subscribers: they hold their connections, so the
# connection cap has them plus some for the requests, and the subscriber cap has them all.
sed "s/^\[limits\]$/[limits]\nmax_connections = $((SUBSCRIBERS + 1024))/" config/mesgate.toml >"$TMP/mesgate.toml"
printf '\n[events]\nmax_subscribers = %d\n' "$SUBSCRIBERS" >>"$TMP/mesgate.toml"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pids+=("$!"); wait_port "$REDIS_PORT"
"$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" >/dev/null 2>&1 &
pids+=("$!"); wait_port "$SIM_PORT"
MESGATE_LISTEN="127.0.0.1:$GW_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
MESGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" MESGATE_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" RUST_LOG=warn \
  "$BIN/mesgate" --config "$TMP/mesgate.toml" >"$TMP/mesgate.log" 2>&1 &
gw_pid=$!; pids+=("$gw_pid"); wait_port "$GW_PORT"; wait_port "$ADMIN_PORT"
# The status index preloads at start: its memory is not the subscribers'. Wait (bounded)
# until no partition is loading any more.
for i in $(seq 1 600); do
  m=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" || true)
  if grep -q 'state="ready"} [1-9]' <<<"$m" && ! grep -q 'state="loading"} [1-9]' <<<"$m"; then break; fi
  [ "$i" = 600 ] && die "the status index did not finish loading in 60 s"
  sleep 0.1
done

async_flag=()
[ "$ASYNC" = 1 ] && async_flag=(--respond-async)
echo "## events-bench: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo -)$([[ -n "$(git status --porcelain --untracked-files=no -- src mes-sim Cargo.toml Cargo.lock examples 2>/dev/null)" ]] && echo +dirty), binaries $BIN, $(nproc) cores, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "SUBSCRIBERS=$SUBSCRIBERS WRITES=$WRITES/s DURATION=$DURATION ASYNC=$ASYNC; mes-sim default latencies; one mesgate instance, redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
echo
# In the background and waited for, so that a signal reaches the trap at once.
timeout 600 "$BIN/examples/sse_subscribers" --gateway "http://127.0.0.1:$GW_PORT" \
  --subscribers "$SUBSCRIBERS" --writes-per-sec "$WRITES" --duration "$DURATION" \
  --gateway-pid "$gw_pid" --clk-tck "$(getconf CLK_TCK)" "${async_flag[@]}" &
client=$!; pids+=("$client")
wait "$client" || die "the load client failed (mesgate log: $(tail -n 3 "$TMP/mesgate.log"))"
# What mesgate said went wrong (an event it could not append to the stream is lost for
# every subscriber: publishing is best effort, the write itself is done).
warns=$(grep -c -i "warn" "$TMP/mesgate.log" || true)
unpublished=$(grep -c "event not published" "$TMP/mesgate.log" || true)
# An append that timed out was queued and appended again (the event may then arrive twice,
# and the ones after it wait behind it); a Redis call skipped by the open breaker. Both say
# Redis answers reached mesgate late: its runtime was busy with the fan-out.
late=$(grep -c "event not appended" "$TMP/mesgate.log" || true)
skipped=$(grep -c "breaker open" "$TMP/mesgate.log" || true)
echo
echo "mesgate log: $warns warnings, $unpublished of them \"event not published\", $late \"event not appended, queued\", $skipped \"breaker open\"$([ "$warns" -gt 0 ] && printf '; first: %s' "$(grep -i -m1 warn "$TMP/mesgate.log" | cut -c1-200)")"
