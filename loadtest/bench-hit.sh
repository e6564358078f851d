#!/usr/bin/env bash
# bench-hit.sh: L1-hit throughput and CPU per request of mesgate against nginx proxy_cache
# (the peer) and a bare hyper server serving the same bytes (the ceiling), measured in the
# same run.
#
# Starts mes-sim (instant), mesgate with loadtest/hit.toml in front of it, warms one
# 50-order list page, captures the hit's body and headers, starts examples/bare_hyper with
# them and nginx with loadtest/nginx/hit.conf in front of the same simulator (warmed until
# X-Cache-Status: HIT), then runs oha against the gateway, nginx and the bare server,
# interleaved, ROUNDS times. For each run: req/s (oha JSON), the server's CPU time
# (utime+stime from /proc/PID/stat; for nginx the master and all its children) over the
# run, divided by the responses. Prints a markdown table and writes it to
# loadtest/results/hit-<date>.md. Everything talks to 127.0.0.1 only.
#
# Knobs (environment):
#   ROUNDS=3        interleaved gateway/nginx/bare rounds
#   DURATION=10s    oha -z per run
#   CONNS=64        oha -c
#   WARMUP=2s       one unmeasured oha run per target before the rounds ("0" skips it)
#   PIN=0           1: servers on CPU $SERVER_CPUS, oha on CPU $OHA_CPUS (taskset)
#   SERVER_CPUS=0   OHA_CPUS=1
#   BARE_MODE=http1 bare server's connection builder: http1 (plain) or auto (as the gateway)
#   BUILD=1         0: use the binaries already in target/release
#   OHA=oha         the oha binary (falls back to ~/.cargo/bin/oha)
#   GW_PORT=18080 (must match hit.toml)  BARE_PORT=18081  SIM_PORT=19090
#   PAGE=/api/orders?status=MANUFACTURING_APPROVED
#   QUIET_WAIT=30   before each run, wait up to this many seconds for the machine to be
#   QUIET_MAX=25    idle (busy below QUIET_MAX % of one CPU over 1 s); 0 disables the wait
#   NOISE_MAX=10    a round counts as disturbed when "other CPU %" reaches this in a run
#   NGINX=1         0: leave nginx out (the report says so)
#   NGINX_PORT=18082  NGINX_VALID=10s (proxy_cache_valid 200)  NGINX_BIN=nginx
#   NGINX_INSTALL   1: apt-get install nginx-light when nginx is missing (root only);
#                   default 1 when CI=true, else 0: a missing nginx is then skipped with a
#                   loud note that says how to install it
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
GW_PORT=${GW_PORT:-18080}
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
    [[ -x "$HOME/.cargo/bin/oha" ]] || die "oha not found (cargo install oha)"
    OHA="$HOME/.cargo/bin/oha"
fi
for tool in curl python3 getconf; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
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
TARGETS=(gateway bare)
[[ -z "$NGINX_SKIPPED" ]] && TARGETS=(gateway nginx bare)

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
if [[ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
    COMMIT="$COMMIT+dirty"
fi
if [[ "$BUILD" != 1 ]]; then
    COMMIT="$COMMIT (BUILD=0: binaries built $(date -u -r target/release/mesgate +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo '?'), possibly from another tree)"
fi
if [[ "$BUILD" == 1 ]]; then
    echo "building (release)..." >&2
    cargo build --release --bin mesgate --bin mes-sim --example bare_hyper >&2
fi
BIN=target/release
for b in "$BIN/mesgate" "$BIN/mes-sim" "$BIN/examples/bare_hyper"; do
    [[ -x "$b" ]] || die "$b missing (BUILD=1 builds it)"
done

for p in "$GW_PORT" "$BARE_PORT" "$SIM_PORT" "$NGINX_PORT"; do
    port_free "$p" || die "something already answers on 127.0.0.1:$p"
done

# --- servers -----------------------------------------------------------------------------
"${SERVER_PIN[@]}" "$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" --instant \
    >"$TMP/sim.out" 2>"$TMP/sim.log" &
SIM_PID=$!
PIDS+=("$SIM_PID")
wait_http "http://127.0.0.1:$SIM_PORT/api/orders/status-counts" "$SIM_PID"

env -u MESGATE_REDIS_URL -u MESGATE_LISTEN -u MESGATE_ADMIN_LISTEN \
    MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
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
    for _ in $(seq 20); do
        curl -s --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/nginx.headers" -o "$TMP/nginx.body" "$NGINX_URL"
        tr -d '\r' <"$TMP/nginx.headers" >"$TMP/nginx.h"
        grep -qi '^x-cache-status: HIT$' "$TMP/nginx.h" && break
        sleep 0.1
    done
    head -n1 "$TMP/nginx.h" | grep -q ' 200' || die "nginx did not answer 200: $(head -n1 "$TMP/nginx.h")"
    grep -qi '^x-cache-status: HIT$' "$TMP/nginx.h" \
        || die "nginx never served the page as a cache HIT: $(grep -i '^x-cache-status' "$TMP/nginx.h" || echo 'no x-cache-status')"
    cmp -s "$TMP/body" "$TMP/nginx.body" || die "nginx's body differs from the gateway's"
    NGINX_WORKERS=$(pgrep -c -f '^nginx: worker process' -P "$NGINX_PID" || true)
fi

echo "gateway hit headers (bare sends the same, plus its own Date/Content-Length):" >&2
sed 's/^/  /' "$TMP/hit.h" >&2
if [[ -n "$NGINX_PID" ]]; then
    echo "nginx hit headers ($NGINX_WORKERS workers):" >&2
    sed 's/^/  /' "$TMP/nginx.h" >&2
fi
echo "body: $BODY_BYTES bytes" >&2

# --- runs --------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
WATCHDOG=$(( $(secs "$DURATION") + 60 ))

# CPU ticks of a target: one process for the gateway and bare, the master and all its
# children for nginx.
server_ticks() {
    case $1 in
        gateway) cpu_ticks "$GW_PID" ;;
        bare) cpu_ticks "$BARE_PID" ;;
        nginx) nginx_ticks "$NGINX_PID" ;;
    esac
}

# Lists the simulator has served so far (requests that reached the MES).
sim_lists() {
    curl -s --max-time 5 "http://127.0.0.1:$SIM_PORT/__sim/stats" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["list"])'
}

# run_oha NAME URL TARGET OUT [DURATION]: one oha run; writes "rps cpu_us_per_req responses
# server_cpu_pct p50_ms p99_ms oha_cpu_pct other_cpu_pct mes_fetches".
run_oha() {
    local name=$1 url=$2 target=$3 out=$4 dur=${5:-$DURATION}
    local pid t0 t1 w0 w1 sim0 sim1 m0 m1 c0 c1 l0 l1
    case $target in gateway) pid=$GW_PID ;; bare) pid=$BARE_PID ;; nginx) pid=$NGINX_PID ;; esac
    l0=$(sim_lists)
    children_cpu >"$TMP/c0"
    t0=$(server_ticks "$target")
    sim0=$(cpu_ticks "$SIM_PID")
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
    children_cpu >"$TMP/c1"
    c0=$(<"$TMP/c0")
    c1=$(<"$TMP/c1")
    l1=$(sim_lists)
    kill -0 "$pid" 2>/dev/null || die "$name server died during the run"
    python3 - "$TMP/$name.json" "$((t1 - t0))" "$CLK_TCK" "$w0" "$w1" "$((sim1 - sim0))" "$name" \
        "$((m1 - m0))" "$c0" "$c1" "$((l1 - l0))" >"$out" <<'PY'
import json, sys
path, ticks, tck, w0, w1, sim_ticks, name, machine_ticks, c0, c1, fetches = sys.argv[1:]
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
if (int(fetches) > 0 or int(sim_ticks) > 2) and name.startswith("gateway"):
    print(f"warning: the simulator served {fetches} lists and used {sim_ticks} ticks during a gateway run (misses?)", file=sys.stderr)
cpu_s = int(ticks) / int(tck)
wall = float(w1) - float(w0)
p = d.get("latencyPercentiles", {})
oha_s = float(c1) - float(c0)
# Everything else busy on the machine meanwhile (other users, the kernel's share not
# charged to either process): the noise indicator.
other_s = max(0.0, int(machine_ticks) / int(tck) - cpu_s - oha_s - int(sim_ticks) / int(tck))
print(d["summary"]["requestsPerSec"], cpu_s * 1e6 / ok, ok, 100 * cpu_s / wall,
      1000 * (p.get("p50") or 0), 1000 * (p.get("p99") or 0),
      100 * oha_s / wall, 100 * other_s / wall, int(fetches))
PY
}

if [[ "$WARMUP" != 0 ]]; then
    echo "warm-up: $WARMUP per target" >&2
    for target in "${TARGETS[@]}"; do
        case $target in gateway) url=$GW_URL ;; nginx) url=$NGINX_URL ;; bare) url=$BARE_URL ;; esac
        run_oha "warm-$target" "$url" "$target" /dev/null "$WARMUP"
    done
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$TMP/rows"
for r in $(seq "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
        case $target in gateway) url=$GW_URL ;; nginx) url=$NGINX_URL ;; bare) url=$BARE_URL ;; esac
        echo "round $r/$ROUNDS: $target ($DURATION, $CONNS connections)" >&2
        wait_quiet
        run_oha "$target-$r" "$url" "$target" "$TMP/res"
        echo "$r $target $(cat "$TMP/res")" >>"$TMP/rows"
    done
done

# A hit after the runs still says HIT-L1 (the page never left L1).
curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/after.h" "$GW_URL"
grep -qi '^x-cache: HIT-L1' "$TMP/after.h" || die "after the runs the page is no longer an L1 hit"
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
CMD="ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS WARMUP=$WARMUP PIN=$PIN BARE_MODE=$BARE_MODE QUIET_WAIT=$QUIET_WAIT NGINX=$NGINX loadtest/bench-hit.sh"
OHA_CMD="$OHA -z $DURATION -c $CONNS -w --no-tui --output-format json <url>"

mkdir -p loadtest/results
REPORT="loadtest/results/hit-$STAMP.md"
python3 - "$TMP/rows" "$NOISE_MAX" "$NGINX_SKIPPED" >"$TMP/table" <<'PY'
import statistics, sys
NOISE_MAX = float(sys.argv[2])
skipped = sys.argv[3]
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("| round | target | req/s | CPU µs/req | server CPU % | oha CPU % | other CPU % | MES fetches | p50 ms | p99 ms |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
by = {}
for r, t, rps, cpu, n, pct, p50, p99, oha, other, fetches in rows:
    rps, cpu, pct, p50, p99, oha, other = map(float, (rps, cpu, pct, p50, p99, oha, other))
    by.setdefault(t, []).append((rps, cpu, other))
    print(f"| {r} | {t} | {rps:,.0f} | {cpu:.1f} | {pct:.0f} | {oha:.0f} | {other:.0f} | {fetches} | {p50:.2f} | {p99:.2f} |")
targets = [t for t in ("gateway", "nginx", "bare") if t in by]
med = {t: (statistics.median(x[0] for x in by[t]), statistics.median(x[1] for x in by[t])) for t in targets}
peers = [t for t in ("bare", "nginx") if t in by]
print()
print("| | req/s (median) | CPU µs/req (median) |")
print("|---|---:|---:|")
for t in targets:
    print(f"| {t} | {med[t][0]:,.0f} | {med[t][1]:.1f} |")
tr = {p: med["gateway"][0] / med[p][0] for p in peers}
cr = {p: med["gateway"][1] / med[p][1] for p in peers}
for p in peers:
    print(f"| **gateway / {p}** | **{tr[p]:.2f}x** | **{cr[p]:.2f}x** |")
if skipped:
    print(f"| gateway / nginx | {skipped} | |")
print()
def fmt(xs):
    return ", ".join(f"{x:.2f}" for x in xs)
n = len(by["gateway"])
ratios = {p: [by["gateway"][i][0] / by[p][i][0] for i in range(n)] for p in peers}
cpu_ratios = {p: [by["gateway"][i][1] / by[p][i][1] for i in range(n)] for p in peers}
for p in peers:
    print(f"- throughput ratio per round (gateway/{p}): {fmt(ratios[p])} (median {statistics.median(ratios[p]):.2f})")
    print(f"- CPU-per-request ratio per round (gateway/{p}): {fmt(cpu_ratios[p])} (median {statistics.median(cpu_ratios[p]):.2f})")
# A round is disturbed when something else kept the machine busy during any of its runs.
clean = [i for i in range(n) if max(by[t][i][2] for t in targets) < NOISE_MAX]
if len(clean) < n:
    msg = (f"- {n - len(clean)} of {n} rounds disturbed (other CPU >= {NOISE_MAX:.0f}% "
           f"in a run): the throughput figures above are noise-dominated")
    if clean:
        msg += f"; undisturbed rounds {', '.join(str(i + 1) for i in clean)}:"
        msg += ";".join(f" gateway/{p} throughput {fmt(ratios[p][i] for i in clean)}, "
                        f"CPU {fmt(cpu_ratios[p][i] for i in clean)}" for p in peers)
    print(msg)
print(f"- target, throughput at least 0.85x of bare (ratio of medians): "
      f"**{'met' if tr['bare'] >= 0.85 else 'NOT met'}** ({tr['bare']:.2f}x)")
if "nginx" in by:
    ok_t, ok_c = tr["nginx"] >= 1.1, cr["nginx"] < 1.0
    print(f"- target, throughput at least 1.1x of nginx with less CPU per request (ratios of medians): "
          f"**{'met' if ok_t and ok_c else 'NOT met'}** (throughput {tr['nginx']:.2f}x: "
          f"{'met' if ok_t else 'not met'}; CPU per request {cr['nginx']:.2f}x: {'met' if ok_c else 'not met'})")
else:
    print(f"- target against nginx: **not measured** ({skipped})")
PY

{
    if [[ -n "$NGINX_PID" ]]; then
        echo "# bench-hit: L1 hits vs nginx proxy_cache and bare hyper, $DATE"
    else
        echo "# bench-hit: L1 hits vs bare hyper (nginx left out), $DATE"
    fi
    echo
    cat "$TMP/table"
    echo
    echo "- command: \`$CMD\`"
    echo "- each run: \`$OHA_CMD\` (oha $OHA_VERSION)"
    echo "- page: \`GET $PAGE\`, $BODY_BYTES body bytes, X-Cache HIT-L1; bare server: examples/bare_hyper ($BARE_MODE builder)"
    if [[ -n "$NGINX_PID" ]]; then
        echo "- nginx: $NGINX_VERSION, loadtest/nginx/hit.conf, worker_processes auto ($NGINX_WORKERS workers), proxy_cache_valid 200 $NGINX_VALID, proxy_cache_lock on; X-Cache-Status HIT before and after the rounds; \"MES fetches\": lists the simulator served during the run (nginx refills the page every $NGINX_VALID)"
    else
        echo "- **nginx: $NGINX_SKIPPED**"
    fi
    echo "- machine: $MACHINE; load average before the rounds: $LOAD_BEFORE"
    echo "- $PINNING"
    echo "- commit: $COMMIT"
} | tee "$REPORT"
echo >&2
echo "written to $REPORT" >&2
