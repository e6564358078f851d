#!/usr/bin/env bash
# bench-hit.sh: hit throughput and CPU per request of mesgate, from L1 (in-process) and
# from L2 (Redis, L1 skipped) and from the status index, against nginx proxy_cache (the peer) and a bare hyper server
# serving the same bytes (the ceiling), measured in the same run.
#
# Starts mes-sim (instant), mesgate with loadtest/hit.toml in front of it (gateway-L1),
# warms one 50-order list page, captures the hit's body and headers, starts
# examples/bare_hyper with them; with MODES containing l2, a redis-server and a second
# mesgate with loadtest/hit-l2.toml (ttl_l1 = "0s": every hit comes from Redis,
# gateway-L2, warmed until X-Cache: HIT-L2); with MODES containing index, a third mesgate
# with loadtest/hit-index.toml (the page served from the status index, gateway-index,
# warmed until X-Cache: HIT-INDEX); nginx with loadtest/nginx/hit.conf in front
# of the same simulator (warmed until X-Cache-Status: HIT); then runs oha against each
# target, interleaved, ROUNDS times. For each run: req/s (oha JSON), the server's CPU time
# (utime+stime from /proc/PID/stat; for nginx the master and all its children; for
# gateway-L2 also redis-server's, separately) over the run, divided by the responses.
# Prints a markdown table and writes it to loadtest/results/hit-<date>.md (and the
# medians to hit-<date>.json). Everything talks to 127.0.0.1 only.
#
# Knobs (environment):
#   MODES="l1 index l2"  gateway modes measured: l1 (loadtest/hit.toml, HIT-L1), index
#                   (loadtest/hit-index.toml, HIT-INDEX) and l2 (loadtest/hit-l2.toml +
#                   redis-server, HIT-L2); l1 is always started (its hit is the reference)
#   ROUNDS=3        interleaved rounds, each one run per target
#   DURATION=10s    oha -z per run
#   CONNS=64        oha -c
#   WARMUP=2s       one unmeasured oha run per target before the rounds ("0" skips it)
#   PIN=0           1: servers on CPU $SERVER_CPUS, oha on CPU $OHA_CPUS (taskset)
#   SERVER_CPUS=0   OHA_CPUS=1
#   BARE_MODE=http1 bare server's connection builder: http1 (plain) or auto (as the gateway)
#   BUILD=1         0: use the binaries already in $BIN
#   BIN=target/release   where mesgate, mes-sim and examples/bare_hyper are
#   OHA=oha         the oha binary (falls back to ~/.cargo/bin/oha)
#   GW_PORT=18080  GW_L2_PORT=18083  GW_IX_PORT=18084  BARE_PORT=18081  SIM_PORT=19090  REDIS_PORT=16590
#   PAGE=/api/orders?status=MANUFACTURING_APPROVED
#   QUIET_WAIT=30   before each run, wait up to this many seconds for the machine to be
#   QUIET_MAX=25    idle (busy below QUIET_MAX % of one CPU over 1 s); 0 disables the wait
#   NOISE_MAX=10    a round counts as disturbed when "other CPU %" reaches this in a run
#   NGINX=1         0: leave nginx out (the report says so)
#   NGINX_PORT=18082  NGINX_VALID=10s (proxy_cache_valid 200)  NGINX_BIN=nginx
#   NGINX_INSTALL   1: apt-get install nginx-light when nginx is missing (root only);
#                   default 1 when CI=true, else 0: a missing nginx is then skipped with a
#                   loud note that says how to install it
#   REPORT=loadtest/results/hit-<UTC stamp>.md   where the report goes (the medians go
#                   next to it, same name with .json)
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2s}
PIN=${PIN:-0}
SERVER_CPUS=${SERVER_CPUS:-0}
OHA_CPUS=${OHA_CPUS:-1}
BARE_MODE=${BARE_MODE:-http1}
BUILD=${BUILD:-1}
BIN=${BIN:-target/release}
GW_PORT=${GW_PORT:-18080}
GW_L2_PORT=${GW_L2_PORT:-18083}
GW_IX_PORT=${GW_IX_PORT:-18084}
REDIS_PORT=${REDIS_PORT:-16590}
MODES=${MODES:-l1 index l2}
BARE_PORT=${BARE_PORT:-18081}
SIM_PORT=${SIM_PORT:-19090}
PAGE=${PAGE:-/api/orders?status=MANUFACTURING_APPROVED}
QUIET_WAIT=${QUIET_WAIT:-30}
QUIET_MAX=${QUIET_MAX:-25}
NOISE_MAX=${NOISE_MAX:-10}
NGINX=${NGINX:-1}
NGINX_PORT=${NGINX_PORT:-18082}
NGINX_VALID=${NGINX_VALID:-10s}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "bench-hit: $*" >&2; exit 1; }

OHA=${OHA:-oha}
if ! command -v "$OHA" >/dev/null 2>&1; then
    [[ -x "$HOME/.cargo/bin/oha" ]] || die "oha not found (cargo install oha --version 1.16.0 --locked)"
    OHA="$HOME/.cargo/bin/oha"
fi
for tool in curl python3 getconf pgrep; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install -y curl python3 libc-bin procps)"
done
L1=0
L2=0
IX=0
for m in $MODES; do
    case "$m" in
        l1) L1=1 ;;
        l2) L2=1 ;;
        index) IX=1 ;;
        *) die "MODES: a list of l1, index and l2, got '$m'" ;;
    esac
done
(( L1 + L2 + IX > 0 )) || die "MODES is empty (l1, index, l2)"
if (( L2 )); then
    command -v redis-server >/dev/null 2>&1 \
        || die "MODES has l2: redis-server not found (apt-get install -y redis-server)"
fi
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"
[[ "$QUIET_WAIT" =~ ^[0-9]+$ && "$QUIET_MAX" =~ ^[0-9]+$ && "$NOISE_MAX" =~ ^[0-9]+$ ]] || die "QUIET_WAIT, QUIET_MAX and NOISE_MAX are integers"
case "$BARE_MODE" in http1) BARE_FLAG=() ;; auto) BARE_FLAG=(--auto) ;; *) die "BARE_MODE: http1 or auto" ;; esac
[[ "$NGINX_VALID" =~ ^[0-9]+[smh]$ ]] || die "NGINX_VALID: an nginx time such as 10s"

# shellcheck source=loadtest/nginx/lib.sh
source "$ROOT/loadtest/nginx/lib.sh"
# Why nginx is not in this run, for the report ("" = it is).
NGINX_SKIPPED=
if [[ "$NGINX" != 1 ]]; then
    NGINX_SKIPPED="NGINX=$NGINX: left out on purpose"
    echo "bench-hit: NGINX=$NGINX: the nginx proxy_cache target is left out" >&2
elif ! nginx_find bench-hit; then
    NGINX_SKIPPED="nginx not installed (apt-get install -y nginx-light): SKIPPED"
fi
TARGETS=()
(( L1 )) && TARGETS+=(gateway-L1)
(( IX )) && TARGETS+=(gateway-index)
(( L2 )) && TARGETS+=(gateway-L2)
[[ -z "$NGINX_SKIPPED" ]] && TARGETS+=(nginx)
TARGETS+=(bare)

# Seconds in an oha duration (for the watchdog around each run).
secs() {
    local n=${1%[smh]}
    [[ "$n" =~ ^[0-9]+$ ]] || { echo 600; return; }
    case "$1" in
        *s) echo "$n" ;;
        *m) echo $(( n * 60 )) ;;
        *h) echo $(( n * 3600 )) ;;
        *) echo 600 ;;
    esac
}

SERVER_PIN=()
OHA_PIN=()
if [[ "$PIN" == 1 ]]; then
    command -v taskset >/dev/null 2>&1 || die "PIN=1 needs taskset"
    SERVER_PIN=(taskset -c "$SERVER_CPUS")
    OHA_PIN=(taskset -c "$OHA_CPUS")
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-hit.XXXXXX")
PIDS=()
OHA_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$OHA_PID" ]]; then
        kill -TERM "$OHA_PID" 2>/dev/null || true   # timeout passes it on to oha
        wait "$OHA_PID" 2>/dev/null || true
    fi
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded wait, then force.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        echo "bench-hit: failed (rc $rc); server logs:" >&2
        tail -n 20 "$TMP"/*.log >&2 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; }

# Polls URL until it answers (any HTTP status), at most ~10 s.
wait_http() {
    local url=$1 pid=$2
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited while waiting for $url"
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    die "$url not ready after 10 s"
}

# warm_until NAME URL FILE HEADER VALUE: asks URL until HEADER says VALUE (a fill may take
# a request or two), then checks the answer is a 200 with the gateway-L1 body ($TMP/body).
# Leaves the head in $TMP/FILE.h and the body in $TMP/FILE.body.
warm_until() {
    local name=$1 url=$2 file=$3 header=$4 value=$5 tries=${6:-20}
    for _ in $(seq "$tries"); do
        curl -s --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/$file.headers" -o "$TMP/$file.body" "$url"
        tr -d '\r' <"$TMP/$file.headers" >"$TMP/$file.h"
        grep -qi "^$header: $value\$" "$TMP/$file.h" && break
        sleep 0.1
    done
    head -n1 "$TMP/$file.h" | grep -q ' 200' || die "$name did not answer 200: $(head -n1 "$TMP/$file.h")"
    grep -qi "^$header: $value\$" "$TMP/$file.h" \
        || die "$name never answered $header: $value: $(grep -i "^$header" "$TMP/$file.h" || echo "no $header")"
    cmp -s "$TMP/body" "$TMP/$file.body" || die "$name's body differs from gateway-L1's"
}

# utime+stime of a process (all its threads), in clock ticks.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }   # drop "pid (comm) ": comm may contain spaces
    # shellcheck disable=SC2086
    set -- $stat        # $1 is field 3 (state): utime is field 14, stime field 15
    echo $(( ${12} + ${13} ))
}

# Busy CPU of the whole machine (all CPUs), in clock ticks, from /proc/stat.
machine_ticks() {
    local _cpu user nice system _idle _iowait irq softirq steal _rest
    read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
    echo $(( user + nice + system + irq + softirq + steal ))
}

# Before a run, waits (at most QUIET_WAIT seconds) for the machine to be nearly idle: busy
# CPU over a 1 s sample below QUIET_MAX % of one CPU. Proceeds anyway after the wait; the
# "other CPU %" column then shows the disturbance. QUIET_WAIT=0 turns this off.
wait_quiet() {
    local waited=0 m0 m1 busy
    while (( waited < QUIET_WAIT )); do
        m0=$(machine_ticks)
        sleep 1
        m1=$(machine_ticks)
        busy=$(( (m1 - m0) * 100 / CLK_TCK ))
        (( busy <= QUIET_MAX )) && return 0
        waited=$(( waited + 1 ))
    done
    (( QUIET_WAIT == 0 )) || echo "  machine still busy (${busy}% of a CPU) after ${QUIET_WAIT}s, running anyway" >&2
}

# CPU of this shell's finished children (oha, through timeout), as "user sys" seconds.
# `times` must run in this shell, not in a $( ) subshell, hence the file.
children_cpu() {
    times >"$TMP/times"
    tail -n1 "$TMP/times" | sed -E 's/([0-9]+)m([0-9.]+)s/\1 \2/g' \
        | awk '{ printf "%.3f\n", $1 * 60 + $2 + $3 * 60 + $4 }'
}

# Same request headers as oha sends, so the warm-up and capture hit the key oha hits.
OHA_VERSION=$("$OHA" --version | awk '{print $2}')
REQ_HEADERS=(-H 'accept: */*' -H 'accept-encoding: gzip, compress, deflate, br' -A "oha/$OHA_VERSION")

# --- build -------------------------------------------------------------------------------
# The commit is taken before building: others may commit while the benchmark runs.
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git status --porcelain --untracked-files=no -- src mes-sim Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
    COMMIT="$COMMIT+dirty"
fi
if [[ "$BUILD" != 1 ]]; then
    COMMIT="$COMMIT (BUILD=0: $BIN/mesgate built $(date -u -r "$BIN/mesgate" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo '?'), possibly from another tree)"
fi
if [[ "$BUILD" == 1 ]]; then
    echo "building (release)..." >&2
    cargo build --release --bin mesgate --bin mes-sim --example bare_hyper >&2
fi
for b in "$BIN/mesgate" "$BIN/mes-sim" "$BIN/examples/bare_hyper"; do
    [[ -x "$b" ]] || die "$b missing (BUILD=1 builds it)"
done

PORTS=("$GW_PORT" "$BARE_PORT" "$SIM_PORT" "$NGINX_PORT")
(( L2 )) && PORTS+=("$GW_L2_PORT" "$REDIS_PORT")
(( IX )) && PORTS+=("$GW_IX_PORT")
for p in "${PORTS[@]}"; do
    port_free "$p" || die "something already answers on 127.0.0.1:$p"
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "something already listens on 127.0.0.1:$p"
done

# --- servers -----------------------------------------------------------------------------
"${SERVER_PIN[@]}" "$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" --instant \
    >"$TMP/sim.out" 2>"$TMP/sim.log" &
SIM_PID=$!
PIDS+=("$SIM_PID")
wait_http "http://127.0.0.1:$SIM_PORT/api/orders/status-counts" "$SIM_PID"

env -u MESGATE_REDIS_URL -u MESGATE_ADMIN_LISTEN \
    MESGATE_LISTEN="127.0.0.1:$GW_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
    "${SERVER_PIN[@]}" "$BIN/mesgate" --config loadtest/hit.toml \
    >"$TMP/gw.out" 2>"$TMP/gw.log" &
GW_PID=$!
PIDS+=("$GW_PID")
GW_URL="http://127.0.0.1:$GW_PORT$PAGE"
wait_http "$GW_URL" "$GW_PID"

# Warm the page, then capture a hit.
curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" "$GW_URL"
curl -s --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/hit.headers" -o "$TMP/body" "$GW_URL"
tr -d '\r' <"$TMP/hit.headers" >"$TMP/hit.h"
head -n1 "$TMP/hit.h" | grep -q ' 200' || die "warm page did not answer 200: $(head -n1 "$TMP/hit.h")"
grep -qi '^x-cache: HIT-L1$' "$TMP/hit.h" || die "second request was not an L1 hit: $(grep -i '^x-cache' "$TMP/hit.h" || echo 'no x-cache')"
# Drop the status line, Date and Content-Length (hyper writes both for either server) and
# hop-by-hop headers; keep everything else in order.
tail -n +2 "$TMP/hit.h" \
    | grep -viE '^(date|content-length|transfer-encoding|connection|keep-alive|proxy-[a-z-]*|te|trailer|upgrade):' \
    | grep -v '^$' >"$TMP/headers" || true
BODY_BYTES=$(wc -c <"$TMP/body")
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["items"]) == 50, len(d["items"])' "$TMP/body" \
    || die "the warm page is not a 50-order list"

"${SERVER_PIN[@]}" "$BIN/examples/bare_hyper" --listen "127.0.0.1:$BARE_PORT" \
    --body "$TMP/body" --headers "$TMP/headers" "${BARE_FLAG[@]}" \
    >"$TMP/bare.out" 2>"$TMP/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
BARE_URL="http://127.0.0.1:$BARE_PORT$PAGE"
wait_http "$BARE_URL" "$BARE_PID"
curl -s --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/bare.headers" -o "$TMP/bare.body" "$BARE_URL"
cmp -s "$TMP/body" "$TMP/bare.body" || die "bare server's body differs from the gateway's"

# The L2 mode: a redis-server of our own (no persistence) and a second gateway whose route
# skips L1 (hit-l2.toml: ttl_l1 = "0s"), so that every hit is read from Redis.
GW2_PID=
REDIS_PID=
GW2_URL="http://127.0.0.1:$GW_L2_PORT$PAGE"
redis_cmds() { # commands redis-server has processed so far (0 without the L2 mode)
    if [[ -z "$REDIS_PID" ]]; then echo 0; return; fi
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info stats 2>/dev/null \
        | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p'
}
if (( L2 )); then
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found (apt-get install -y redis-tools)"
    "${SERVER_PIN[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
        --appendonly no >"$TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
        kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited (see its log below)"
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG \
        || die "redis-server on 127.0.0.1:$REDIS_PORT not ready after 10 s"
    REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
    env -u MESGATE_ADMIN_LISTEN \
        MESGATE_LISTEN="127.0.0.1:$GW_L2_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
        MESGATE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        "${SERVER_PIN[@]}" "$BIN/mesgate" --config loadtest/hit-l2.toml \
        >"$TMP/gw2.out" 2>"$TMP/gw2.log" &
    GW2_PID=$!
    PIDS+=("$GW2_PID")
    wait_http "$GW2_URL" "$GW2_PID"
    # The first request fills Redis (MISS); then every request must be an L2 hit.
    warm_until gateway-L2 "$GW2_URL" l2 x-cache HIT-L2
    # And again: still HIT-L2, never HIT-L1 (the route skips L1).
    curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/l2b.headers" "$GW2_URL"
    grep -qi '^x-cache: HIT-L2' "$TMP/l2b.headers" || die "gateway-L2's second hit was not HIT-L2"
fi

# The index mode: a third gateway whose page is composed from the status index, preloaded
# from the simulator at start (no Redis).
GW3_PID=
GW3_URL="http://127.0.0.1:$GW_IX_PORT$PAGE"
if (( IX )); then
    env -u MESGATE_REDIS_URL -u MESGATE_ADMIN_LISTEN \
        MESGATE_LISTEN="127.0.0.1:$GW_IX_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
        "${SERVER_PIN[@]}" "$BIN/mesgate" --config loadtest/hit-index.toml \
        >"$TMP/gw3.out" 2>"$TMP/gw3.log" &
    GW3_PID=$!
    PIDS+=("$GW3_PID")
    wait_http "$GW3_URL" "$GW3_PID"
    # Until the preload is done the page takes the ordinary path (MISS, then HIT-L1).
    warm_until gateway-index "$GW3_URL" ix x-cache HIT-INDEX 300
fi

NGINX_PID=
NGINX_URL="http://127.0.0.1:$NGINX_PORT$PAGE"
if [[ -z "$NGINX_SKIPPED" ]]; then
    mkdir -p "$TMP/nginx"
    nginx_render hit.conf "$TMP/nginx/nginx.conf" "$TMP/nginx" "$NGINX_PORT" \
        "127.0.0.1:$SIM_PORT" "$NGINX_VALID"
    # Foreground master (daemon off) in its own prefix: the trap stops it like the others,
    # and it never touches a system nginx's pid file, logs or cache.
    "${SERVER_PIN[@]}" "$NGINX_BIN" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
        >"$TMP/nginx.out" 2>"$TMP/nginx.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_http "$NGINX_URL" "$NGINX_PID"
    # The first request fills the cache (MISS); a later one must be a HIT.
    warm_until nginx "$NGINX_URL" nginx x-cache-status HIT
    NGINX_WORKERS=$(pgrep -c -f '^nginx: worker process' -P "$NGINX_PID" || true)
fi

echo "gateway-L1 hit headers (bare sends the same, plus its own Date/Content-Length):" >&2
sed 's/^/  /' "$TMP/hit.h" >&2
if [[ -n "$GW2_PID" ]]; then
    echo "gateway-L2 hit headers:" >&2
    sed 's/^/  /' "$TMP/l2.h" >&2
fi
if [[ -n "$GW3_PID" ]]; then
    echo "gateway-index hit headers:" >&2
    sed 's/^/  /' "$TMP/ix.h" >&2
fi
if [[ -n "$NGINX_PID" ]]; then
    echo "nginx hit headers ($NGINX_WORKERS workers):" >&2
    sed 's/^/  /' "$TMP/nginx.h" >&2
fi
echo "body: $BODY_BYTES bytes" >&2

# --- runs --------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
WATCHDOG=$(( $(secs "$DURATION") + 60 ))

# CPU ticks of a target: one process for the gateways and bare, the master and all its
# children for nginx. redis-server's are counted separately (redis_ticks).
server_ticks() {
    case $1 in
        gateway-L1) cpu_ticks "$GW_PID" ;;
        gateway-L2) cpu_ticks "$GW2_PID" ;;
        gateway-index) cpu_ticks "$GW3_PID" ;;
        bare) cpu_ticks "$BARE_PID" ;;
        nginx) nginx_ticks "$NGINX_PID" ;;
    esac
}
redis_ticks() { if [[ -n "$REDIS_PID" ]]; then cpu_ticks "$REDIS_PID"; else echo 0; fi; }
target_url() {
    case $1 in
        gateway-L1) echo "$GW_URL" ;;
        gateway-L2) echo "$GW2_URL" ;;
        gateway-index) echo "$GW3_URL" ;;
        nginx) echo "$NGINX_URL" ;;
        bare) echo "$BARE_URL" ;;
    esac
}

# Lists the simulator has served so far (requests that reached the MES).
sim_lists() {
    curl -s --max-time 5 "http://127.0.0.1:$SIM_PORT/__sim/stats" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["list"])'
}

# run_oha NAME URL TARGET OUT [DURATION]: one oha run; writes "rps cpu_us_per_req responses
# server_cpu_pct p50_ms p99_ms oha_cpu_pct other_cpu_pct mes_fetches redis_us_per_req
# redis_cmds_per_req".
run_oha() {
    local name=$1 url=$2 target=$3 out=$4 dur=${5:-$DURATION}
    local pid t0 t1 w0 w1 sim0 sim1 m0 m1 c0 c1 l0 l1 r0 r1 q0 q1
    case $target in
        gateway-L1) pid=$GW_PID ;; gateway-L2) pid=$GW2_PID ;; gateway-index) pid=$GW3_PID ;;
        bare) pid=$BARE_PID ;; nginx) pid=$NGINX_PID ;;
    esac
    l0=$(sim_lists)
    q0=$(redis_cmds)
    children_cpu >"$TMP/c0"
    t0=$(server_ticks "$target")
    sim0=$(cpu_ticks "$SIM_PID")
    r0=$(redis_ticks)
    m0=$(machine_ticks)
    w0=$(date +%s.%N)
    # In the background and waited for, so that a signal reaches the trap at once.
    timeout "$WATCHDOG" "${OHA_PIN[@]}" "$OHA" -z "$dur" -c "$CONNS" -w --no-tui \
        --output-format json -o "$TMP/$name.json" "$url" >/dev/null 2>"$TMP/$name.oha.err" &
    OHA_PID=$!
    wait "$OHA_PID" || die "oha failed against $name: $(cat "$TMP/$name.oha.err")"
    OHA_PID=
    w1=$(date +%s.%N)
    m1=$(machine_ticks)
    t1=$(server_ticks "$target")
    sim1=$(cpu_ticks "$SIM_PID")
    r1=$(redis_ticks)
    children_cpu >"$TMP/c1"
    c0=$(<"$TMP/c0")
    c1=$(<"$TMP/c1")
    l1=$(sim_lists)
    q1=$(redis_cmds)
    kill -0 "$pid" 2>/dev/null || die "$name server died during the run"
    [[ -z "$REDIS_PID" ]] || kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server died during $name"
    python3 - "$TMP/$name.json" "$((t1 - t0))" "$CLK_TCK" "$w0" "$w1" "$((sim1 - sim0))" "$name" \
        "$((m1 - m0))" "$c0" "$c1" "$((l1 - l0))" "$((r1 - r0))" "$((q1 - q0))" "$target" >"$out" <<'PY'
import json, sys
(path, ticks, tck, w0, w1, sim_ticks, name, machine_ticks, c0, c1, fetches, redis_ticks,
 redis_cmds, target) = sys.argv[1:]
d = json.load(open(path))
codes = {k: int(v) for k, v in d.get("statusCodeDistribution", {}).items()}
errors = d.get("errorDistribution", {})
ok = codes.get("200", 0)
bad = sum(v for k, v in codes.items() if k != "200")
rate = d["summary"]["successRate"]
if errors or bad or ok == 0 or rate != 1.0:
    sys.exit(f"{name}: success rate {rate}, non-200 {bad}, errors {errors}")
# The list counter is exact; a tick or two of simulator CPU is accounting noise (the stats
# poll around the run, timers), more is work.
if (int(fetches) > 0 or int(sim_ticks) > 2) and target.startswith("gateway"):
    print(f"warning: the simulator served {fetches} lists and used {sim_ticks} ticks during a gateway run (misses?)", file=sys.stderr)
cpu_s = int(ticks) / int(tck)
redis_s = int(redis_ticks) / int(tck)
wall = float(w1) - float(w0)
p = d.get("latencyPercentiles", {})
oha_s = float(c1) - float(c0)
# Everything else busy on the machine meanwhile (other users, the kernel's share not
# charged to either process): the noise indicator.
other_s = max(0.0, int(machine_ticks) / int(tck) - cpu_s - oha_s - int(sim_ticks) / int(tck) - redis_s)
# redis-server's CPU and commands are the L2 gateway's cost; for the other targets they
# are idle (a tick is timer noise) and only leave "other CPU %".
l2 = target == "gateway-L2"
print(d["summary"]["requestsPerSec"], cpu_s * 1e6 / ok, ok, 100 * cpu_s / wall,
      1000 * (p.get("p50") or 0), 1000 * (p.get("p99") or 0),
      100 * oha_s / wall, 100 * other_s / wall, int(fetches),
      redis_s * 1e6 / ok if l2 else "-", int(redis_cmds) / ok if l2 else "-")
PY
}

if [[ "$WARMUP" != 0 ]]; then
    echo "warm-up: $WARMUP per target" >&2
    for target in "${TARGETS[@]}"; do
        run_oha "warm-$target" "$(target_url "$target")" "$target" /dev/null "$WARMUP"
    done
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$TMP/rows"
for r in $(seq "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
        echo "round $r/$ROUNDS: $target ($DURATION, $CONNS connections)" >&2
        wait_quiet
        run_oha "$target-$r" "$(target_url "$target")" "$target" "$TMP/res"
        echo "$r $target $(cat "$TMP/res")" >>"$TMP/rows"
    done
done

# A hit after the runs still says HIT-L1 (the page never left L1).
curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/after.h" "$GW_URL"
grep -qi '^x-cache: HIT-L1' "$TMP/after.h" || die "after the runs the page is no longer an L1 hit"
if [[ -n "$GW2_PID" ]]; then
    curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/l2-after.h" "$GW2_URL"
    grep -qi '^x-cache: HIT-L2' "$TMP/l2-after.h" || die "after the runs gateway-L2 no longer answers HIT-L2"
fi
if [[ -n "$GW3_PID" ]]; then
    curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/ix-after.h" "$GW3_URL"
    grep -qi '^x-cache: HIT-INDEX' "$TMP/ix-after.h" || die "after the runs gateway-index no longer answers HIT-INDEX"
fi
NGINX_AFTER=
if [[ -n "$NGINX_PID" ]]; then
    # nginx's entry expires every NGINX_VALID: the first request after that refills it.
    for _ in 1 2 3; do
        curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/nginx-after.h" "$NGINX_URL"
        NGINX_AFTER=$(tr -d '\r' <"$TMP/nginx-after.h" | sed -n 's/^[Xx]-[Cc]ache-[Ss]tatus: //p')
        [[ "$NGINX_AFTER" == HIT ]] && break
    done
    [[ "$NGINX_AFTER" == HIT ]] || die "after the runs nginx does not serve the page as a HIT ($NGINX_AFTER)"
fi

# --- report ------------------------------------------------------------------------------
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
STAMP=$(date -u +%Y%m%d-%H%M%S)
CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
MACHINE="$(nproc) CPUs, ${CPU_MODEL:-unknown CPU}, Linux $(uname -r)"
if [[ "$PIN" == 1 ]]; then
    PINNING="PIN=1: servers on CPU $SERVER_CPUS, oha on CPU $OHA_CPUS"
else
    PINNING="PIN=0: no pinning, oha and the servers share all CPUs"
fi
CMD="MODES=\"$MODES\" ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS WARMUP=$WARMUP PIN=$PIN BARE_MODE=$BARE_MODE QUIET_WAIT=$QUIET_WAIT NGINX=$NGINX loadtest/bench-hit.sh"
OHA_CMD="$OHA -z $DURATION -c $CONNS -w --no-tui --output-format json <url>"

REPORT=${REPORT:-loadtest/results/hit-$STAMP.md}
mkdir -p "$(dirname "$REPORT")"
python3 - "$TMP/rows" "$NOISE_MAX" "$NGINX_SKIPPED" "${REPORT%.md}.json" >"$TMP/table" <<'PY'
import json, statistics, sys
NOISE_MAX = float(sys.argv[2])
skipped = sys.argv[3]
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
num = lambda x: None if x == "-" else float(x)
print("| round | target | req/s | server CPU µs/req | redis-server CPU µs/req | total CPU µs/req | Redis cmds/req | server CPU % | oha CPU % | other CPU % | MES fetches | p50 ms | p99 ms |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
by = {}
for r, t, rps, cpu, n, pct, p50, p99, oha, other, fetches, rcpu, rcmds in rows:
    rps, cpu, pct, p50, p99, oha, other = map(float, (rps, cpu, pct, p50, p99, oha, other))
    rcpu, rcmds = num(rcpu), num(rcmds)
    total = cpu + (rcpu or 0.0)
    by.setdefault(t, []).append(dict(rps=rps, cpu=cpu, other=other, rcpu=rcpu, rcmds=rcmds, total=total))
    f = lambda x, d=1: "-" if x is None else f"{x:.{d}f}"
    print(f"| {r} | {t} | {rps:,.0f} | {cpu:.1f} | {f(rcpu)} | {total:.1f} | {f(rcmds, 2)} | {pct:.0f} | {oha:.0f} | {other:.0f} | {fetches} | {p50:.2f} | {p99:.2f} |")
targets = [t for t in ("gateway-L1", "gateway-index", "gateway-L2", "nginx", "bare") if t in by]
def med(t, k):
    xs = [x[k] for x in by[t] if x[k] is not None]
    return statistics.median(xs) if xs else None
M = {t: {k: med(t, k) for k in ("rps", "cpu", "rcpu", "total", "rcmds")} for t in targets}
print()
print("| | req/s (median) | server CPU µs/req (median) | redis-server CPU µs/req (median) | total CPU µs/req (median) |")
print("|---|---:|---:|---:|---:|")
for t in targets:
    r = M[t]["rcpu"]
    print(f"| {t} | {M[t]['rps']:,.0f} | {M[t]['cpu']:.1f} | {'-' if r is None else f'{r:.1f}'} | {M[t]['total']:.1f} |")
# Ratios of medians: throughput, and CPU per request (total: gateway-L2 + redis-server).
pairs = [(a, b) for a, b in (("gateway-L1", "bare"), ("gateway-L1", "nginx"), ("gateway-index", "nginx"),
                             ("gateway-index", "gateway-L1"), ("gateway-L2", "nginx"),
                             ("gateway-L2", "gateway-L1")) if a in by and b in by]
ratios = {}
for a, b in pairs:
    tr, cr = M[a]["rps"] / M[b]["rps"], M[a]["total"] / M[b]["total"]
    ratios[f"{a}/{b}"] = {"throughput": tr, "cpu_per_req": cr}
    note = " (gateway + redis-server)" if a == "gateway-L2" else ""
    print(f"| **{a} / {b}** | **{tr:.2f}x** | | | **{cr:.2f}x**{note} |")
if skipped:
    print(f"| gateway / nginx | {skipped} | | | |")
print()
def fmt(xs):
    return ", ".join(f"{x:.2f}" for x in xs)
n = min(len(v) for v in by.values())
for a, b in pairs:
    rt = [by[a][i]["rps"] / by[b][i]["rps"] for i in range(n)]
    rc = [by[a][i]["total"] / by[b][i]["total"] for i in range(n)]
    print(f"- {a}/{b} per round: throughput {fmt(rt)} (median {statistics.median(rt):.2f}); "
          f"CPU per request {fmt(rc)} (median {statistics.median(rc):.2f})")
if "gateway-L2" in by:
    print(f"- gateway-L2: {M['gateway-L2']['rcmds']:.2f} Redis commands per request (median): with L1 "
          f"skipped, concurrent requests for the page share one single-flight L2 read, so one "
          f"Redis call answers several requests; its redis-server CPU is counted above")
# A round is disturbed when something else kept the machine busy during any of its runs.
clean = [i for i in range(n) if max(by[t][i]["other"] for t in targets) < NOISE_MAX]
if len(clean) < n:
    msg = (f"- {n - len(clean)} of {n} rounds disturbed (other CPU >= {NOISE_MAX:.0f}% "
           f"in a run): the throughput figures above are noise-dominated")
    if clean:
        msg += f"; undisturbed rounds {', '.join(str(i + 1) for i in clean)}:"
        msg += ";".join(f" {a}/{b} throughput {fmt(by[a][i]['rps'] / by[b][i]['rps'] for i in clean)}, "
                        f"CPU {fmt(by[a][i]['total'] / by[b][i]['total'] for i in clean)}" for a, b in pairs)
    print(msg)
if "gateway-L1" in by:
    tb = ratios["gateway-L1/bare"]["throughput"]
    print(f"- target, gateway-L1 throughput at least 0.85x of bare (ratio of medians): "
          f"**{'met' if tb >= 0.85 else 'NOT met'}** ({tb:.2f}x)")
    if "nginx" in by:
        r = ratios["gateway-L1/nginx"]
        ok_t, ok_c = r["throughput"] >= 1.1, r["cpu_per_req"] < 1.0
        print(f"- target, gateway-L1 throughput at least 1.1x of nginx with less CPU per request (ratios of medians): "
              f"**{'met' if ok_t and ok_c else 'NOT met'}** (throughput {r['throughput']:.2f}x: "
              f"{'met' if ok_t else 'not met'}; CPU per request {r['cpu_per_req']:.2f}x: {'met' if ok_c else 'not met'})")
    else:
        print(f"- target against nginx: **not measured** ({skipped})")
json.dump({"medians": M, "ratios": ratios, "rounds": n, "disturbed_rounds": n - len(clean),
           "nginx_skipped": skipped or None}, open(sys.argv[4], "w"), indent=1)
PY

{
    echo "# bench-hit: mesgate hits ($MODES) vs $([[ -n "$NGINX_PID" ]] && echo "nginx proxy_cache and ")bare hyper, $DATE"
    echo
    cat "$TMP/table"
    echo
    echo "- command: \`$CMD\`"
    echo "- each run: \`$OHA_CMD\` (oha $OHA_VERSION)"
    echo "- page: \`GET $PAGE\`, $BODY_BYTES body bytes; gateway-L1: loadtest/hit.toml, X-Cache HIT-L1; bare server: examples/bare_hyper ($BARE_MODE builder) with gateway-L1's hit headers and body"
    if [[ -n "$GW2_PID" ]]; then
        echo "- gateway-L2: loadtest/hit-l2.toml (ttl_l1 = \"0s\": L1 skipped), redis-server $REDIS_VERSION on 127.0.0.1:$REDIS_PORT (no persistence), X-Cache HIT-L2 before and after the rounds, same body; \"total CPU\" = gateway + redis-server"
    fi
    if [[ -n "$GW3_PID" ]]; then
        echo "- gateway-index: loadtest/hit-index.toml (the page composed from the status index, preloaded at start, no Redis), X-Cache HIT-INDEX before and after the rounds, same body"
    fi
    if [[ -n "$NGINX_PID" ]]; then
        echo "- nginx: $NGINX_VERSION, loadtest/nginx/hit.conf, worker_processes auto ($NGINX_WORKERS workers), proxy_cache_valid 200 $NGINX_VALID, proxy_cache_lock on; X-Cache-Status HIT before and after the rounds; \"MES fetches\": lists the simulator served during the run (nginx refills the page every $NGINX_VALID)"
    else
        echo "- **nginx: $NGINX_SKIPPED**"
    fi
    echo "- machine: $MACHINE; load average before the rounds: $LOAD_BEFORE (a shared box: other sessions' builds may run meanwhile, see \"other CPU %\")"
    echo "- $PINNING"
    echo "- commit: $COMMIT"
} | tee "$REPORT"
echo >&2
echo "written to $REPORT (medians: ${REPORT%.md}.json)" >&2
