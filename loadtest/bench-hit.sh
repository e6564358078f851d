#!/usr/bin/env bash
# bench-hit.sh: L1-hit throughput and CPU per request of mesgate against a bare hyper
# server serving the same bytes, measured in the same run.
#
# Starts mes-sim (instant), mesgate with loadtest/hit.toml in front of it, warms one
# 50-order list page, captures the hit's body and headers, starts examples/bare_hyper with
# them, then runs oha against the gateway and the bare server, interleaved, ROUNDS times.
# For each run: req/s (oha JSON), the server process's CPU time (utime+stime from
# /proc/PID/stat) over the run, divided by the responses. Prints a markdown table and
# writes it to loadtest/results/hit-<date>.md. Everything talks to 127.0.0.1 only.
#
# Knobs (environment):
#   ROUNDS=3        interleaved gateway/bare rounds
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

for p in "$GW_PORT" "$BARE_PORT" "$SIM_PORT"; do
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

echo "gateway hit headers (bare sends the same, plus its own Date/Content-Length):" >&2
sed 's/^/  /' "$TMP/hit.h" >&2
echo "body: $BODY_BYTES bytes" >&2

# --- runs --------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
WATCHDOG=$(( $(secs "$DURATION") + 60 ))

# run_oha NAME URL PID OUT [DURATION]: one oha run; writes
# "rps cpu_us_per_req responses server_cpu_pct p50_ms p99_ms oha_cpu_pct other_cpu_pct".
run_oha() {
    local name=$1 url=$2 pid=$3 out=$4 dur=${5:-$DURATION}
    local t0 t1 w0 w1 sim0 sim1 m0 m1 c0 c1
    children_cpu >"$TMP/c0"
    t0=$(cpu_ticks "$pid")
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
    t1=$(cpu_ticks "$pid")
    sim1=$(cpu_ticks "$SIM_PID")
    children_cpu >"$TMP/c1"
    c0=$(<"$TMP/c0")
    c1=$(<"$TMP/c1")
    kill -0 "$pid" 2>/dev/null || die "$name server died during the run"
    python3 - "$TMP/$name.json" "$((t1 - t0))" "$CLK_TCK" "$w0" "$w1" "$((sim1 - sim0))" "$name" \
        "$((m1 - m0))" "$c0" "$c1" >"$out" <<'PY'
import json, sys
path, ticks, tck, w0, w1, sim_ticks, name, machine_ticks, c0, c1 = sys.argv[1:]
d = json.load(open(path))
codes = {k: int(v) for k, v in d.get("statusCodeDistribution", {}).items()}
errors = d.get("errorDistribution", {})
ok = codes.get("200", 0)
bad = sum(v for k, v in codes.items() if k != "200")
rate = d["summary"]["successRate"]
if errors or bad or ok == 0 or rate != 1.0:
    sys.exit(f"{name}: success rate {rate}, non-200 {bad}, errors {errors}")
if int(sim_ticks) > 0 and name.startswith("gateway"):
    print(f"warning: the simulator used {sim_ticks} ticks during a gateway run (misses?)", file=sys.stderr)
cpu_s = int(ticks) / int(tck)
wall = float(w1) - float(w0)
p = d.get("latencyPercentiles", {})
oha_s = float(c1) - float(c0)
# Everything else busy on the machine meanwhile (other users, the kernel's share not
# charged to either process): the noise indicator.
other_s = max(0.0, int(machine_ticks) / int(tck) - cpu_s - oha_s - int(sim_ticks) / int(tck))
print(d["summary"]["requestsPerSec"], cpu_s * 1e6 / ok, ok, 100 * cpu_s / wall,
      1000 * (p.get("p50") or 0), 1000 * (p.get("p99") or 0),
      100 * oha_s / wall, 100 * other_s / wall)
PY
}

if [[ "$WARMUP" != 0 ]]; then
    echo "warm-up: $WARMUP per target" >&2
    run_oha warm-gateway "$GW_URL" "$GW_PID" /dev/null "$WARMUP"
    run_oha warm-bare "$BARE_URL" "$BARE_PID" /dev/null "$WARMUP"
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$TMP/rows"
for r in $(seq "$ROUNDS"); do
    for target in gateway bare; do
        if [[ $target == gateway ]]; then url=$GW_URL pid=$GW_PID; else url=$BARE_URL pid=$BARE_PID; fi
        echo "round $r/$ROUNDS: $target ($DURATION, $CONNS connections)" >&2
        wait_quiet
        run_oha "$target-$r" "$url" "$pid" "$TMP/res"
        echo "$r $target $(cat "$TMP/res")" >>"$TMP/rows"
    done
done

# A hit after the runs still says HIT-L1 (the page never left L1).
curl -s -o /dev/null --max-time 5 "${REQ_HEADERS[@]}" -D "$TMP/after.h" "$GW_URL"
grep -qi '^x-cache: HIT-L1' "$TMP/after.h" || die "after the runs the page is no longer an L1 hit"

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
CMD="ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS WARMUP=$WARMUP PIN=$PIN BARE_MODE=$BARE_MODE QUIET_WAIT=$QUIET_WAIT loadtest/bench-hit.sh"
OHA_CMD="$OHA -z $DURATION -c $CONNS -w --no-tui --output-format json <url>"

mkdir -p loadtest/results
REPORT="loadtest/results/hit-$STAMP.md"
python3 - "$TMP/rows" "$NOISE_MAX" >"$TMP/table" <<'PY'
import statistics, sys
NOISE_MAX = float(sys.argv[2])
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print("| round | target | req/s | CPU µs/req | server CPU % | oha CPU % | other CPU % | p50 ms | p99 ms |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
by = {"gateway": [], "bare": []}
for r, t, rps, cpu, n, pct, p50, p99, oha, other in rows:
    rps, cpu, pct, p50, p99, oha, other = map(float, (rps, cpu, pct, p50, p99, oha, other))
    by[t].append((rps, cpu, other))
    print(f"| {r} | {t} | {rps:,.0f} | {cpu:.1f} | {pct:.0f} | {oha:.0f} | {other:.0f} | {p50:.2f} | {p99:.2f} |")
med = {t: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for t, v in by.items()}
pairs = list(zip(by["gateway"], by["bare"]))
print()
print("| | req/s (median) | CPU µs/req (median) |")
print("|---|---:|---:|")
for t in ("gateway", "bare"):
    print(f"| {t} | {med[t][0]:,.0f} | {med[t][1]:.1f} |")
tr = med["gateway"][0] / med["bare"][0]
cr = med["gateway"][1] / med["bare"][1]
print(f"| **gateway / bare** | **{tr:.2f}x** | **{cr:.2f}x** |")
print()
def fmt(xs):
    return ", ".join(f"{x:.2f}" for x in xs)
ratios = [g[0] / b[0] for g, b in pairs]
cpu_ratios = [g[1] / b[1] for g, b in pairs]
print(f"- throughput ratio per round (gateway/bare): {fmt(ratios)} (median {statistics.median(ratios):.2f})")
print(f"- CPU-per-request ratio per round (gateway/bare): {fmt(cpu_ratios)} (median {statistics.median(cpu_ratios):.2f})")
# A pair is disturbed when something else kept the machine busy during either run.
clean = [i for i, (g, b) in enumerate(pairs) if max(g[2], b[2]) < NOISE_MAX]
if len(clean) < len(pairs):
    msg = (f"- {len(pairs) - len(clean)} of {len(pairs)} rounds disturbed (other CPU >= {NOISE_MAX:.0f}% "
           f"in a run): the throughput figures above are noise-dominated")
    if clean:
        msg += (f"; undisturbed rounds {', '.join(str(i + 1) for i in clean)}: throughput ratio "
                f"{fmt(ratios[i] for i in clean)}, CPU ratio {fmt(cpu_ratios[i] for i in clean)}")
    print(msg)
print(f"- target, throughput at least 0.85x of bare (ratio of medians): "
      f"**{'met' if tr >= 0.85 else 'NOT met'}** ({tr:.2f}x)")
PY

{
    echo "# bench-hit: L1 hits vs bare hyper, $DATE"
    echo
    cat "$TMP/table"
    echo
    echo "- command: \`$CMD\`"
    echo "- each run: \`$OHA_CMD\` (oha $OHA_VERSION)"
    echo "- page: \`GET $PAGE\`, $BODY_BYTES body bytes, X-Cache HIT-L1; bare server: examples/bare_hyper ($BARE_MODE builder)"
    echo "- machine: $MACHINE; load average before the rounds: $LOAD_BEFORE"
    echo "- $PINNING"
    echo "- commit: $COMMIT"
} | tee "$REPORT"
echo >&2
echo "written to $REPORT" >&2
