#!/usr/bin/env bash
# profile-hit.sh: user-space instructions per cache hit, mesgate L1 against nginx
# proxy_cache, counted by valgrind's callgrind. Unlike req/s on a shared 2-core box, the
# count is repeatable (same binaries, same requests: the same figure within a few tenths
# of a percent, whatever else the machine is doing), so it is the figure to compare
# commits with. It counts user space only: the kernel's socket work (the larger share of
# a hit, and the same for both) and nginx's read of the cached file from the page cache
# are not in it.
#
# Starts an instant mes-sim, then for each target: the server under callgrind (mesgate
# with loadtest/hit.toml, L1 only; nginx with loadtest/nginx/hit.conf, one process:
# master_process off), warms the 50-order page, runs WARM unmeasured requests, zeroes the
# counters, runs N requests with oha (CONNS connections), dumps, and divides. Prints a
# markdown table and, with ANNOTATE=1, the top functions of each profile.
#
# With INDEX=1 (the default) the same page is measured again served from the status index
# (loadtest/hit-index.toml, X-Cache: HIT-INDEX).
#
# Knobs: N=20000 WARM=2000 CONNS=8 BUILD=1 ANNOTATE=0 NGINX=1 INDEX=1
#        GW_PORT=18590 NGINX_PORT=18592 SIM_PORT=19590
#        PAGE=/api/orders?status=MANUFACTURING_APPROVED
#        OUT=loadtest/results/profile-<UTC stamp>   (callgrind files and the table)
#        CARGO_TARGET_DIR=target   (the binaries are taken from its release/ directory)
# Needs valgrind (apt-get install -y valgrind), oha (cargo install oha), curl; nginx
# (apt-get install -y nginx-light) for the nginx row. Talks to 127.0.0.1 only.
set -euo pipefail

N=${N:-20000}
WARM=${WARM:-2000}
CONNS=${CONNS:-8}
BUILD=${BUILD:-1}
ANNOTATE=${ANNOTATE:-0}
INDEX=${INDEX:-1}
NGINX=${NGINX:-1}
GW_PORT=${GW_PORT:-18590}
NGINX_PORT=${NGINX_PORT:-18592}
SIM_PORT=${SIM_PORT:-19590}
PAGE=${PAGE:-/api/orders?status=MANUFACTURING_APPROVED}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-loadtest/results/profile-$(date -u +%Y%m%d-%H%M%S)}

die() { echo "profile-hit: $*" >&2; exit 1; }

[[ "$N" =~ ^[1-9][0-9]*$ && "$WARM" =~ ^[0-9]+$ && "$CONNS" =~ ^[1-9][0-9]*$ ]] \
    || die "N, WARM and CONNS are whole numbers (N and CONNS above 0)"
for tool in valgrind callgrind_control callgrind_annotate curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install -y valgrind curl)"
done
OHA=${OHA:-oha}
if ! command -v "$OHA" >/dev/null 2>&1; then
    [[ -x "$HOME/.cargo/bin/oha" ]] || die "oha not found (cargo install oha --locked)"
    OHA="$HOME/.cargo/bin/oha"
fi
# shellcheck source=loadtest/nginx/lib.sh
source "$ROOT/loadtest/nginx/lib.sh"
HAVE_NGINX=0
if [[ "$NGINX" == 1 ]] && nginx_find profile-hit; then
    HAVE_NGINX=1
fi

if [[ "$BUILD" == 1 ]]; then
    cargo build --release --bin mesgate --bin mes-sim >&2
fi
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$OUT"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_http() { # URL: bounded wait (valgrind starts slowly)
    for _ in $(seq 200); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.25
    done
    die "no answer from $1 after 50 s"
}

"$BIN/mes-sim" --listen "127.0.0.1:$SIM_PORT" --instant >"$OUT/sim.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$SIM_PORT$PAGE"

# measure NAME PID URL: prints the instructions per request of PID over N requests.
measure() {
    local name=$1 pid=$2 url=$3 file total files
    "$OHA" -n "$WARM" -c "$CONNS" --no-tui "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    "$OHA" -n "$N" -c "$CONNS" --no-tui --output-format json "$url" >"$OUT/$name.oha.json"
    callgrind_control -d "$pid" >/dev/null 2>&1
    files=("$OUT/$name.cg.$pid.out".*)
    file=${files[0]}
    [[ -f "$file" ]] || die "$name: callgrind wrote no dump"
    total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
    [[ "$total" =~ ^[0-9]+$ ]] || die "$name: no instruction total in $file"
    if [[ "$ANNOTATE" == 1 ]]; then
        callgrind_annotate --inclusive=yes "$file" 2>/dev/null | head -60 >"$OUT/$name.top.txt"
    fi
    echo $(( total / N ))
}

# The page must be a hit on both, with the same body.
check_hit() { # NAME URL HEADER VALUE
    local got
    got=$(curl -fs -D - -o "$OUT/$1.body" "$2" | tr -d '\r' | awk -v h="$3" 'tolower($1) == tolower(h) ":" {print $2}')
    [[ "$got" == "$4" ]] || die "$1: $3 is '$got', not $4"
}

MESGATE_LISTEN="127.0.0.1:$GW_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
    MESGATE_REDIS_URL=off MESGATE_ADMIN_LISTEN="" \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/mesgate.cg.%p.out" \
    "$BIN/mesgate" --config loadtest/hit.toml >"$OUT/mesgate.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_http "http://127.0.0.1:$GW_PORT$PAGE"
check_hit mesgate "http://127.0.0.1:$GW_PORT$PAGE" x-cache HIT-L1
GW_IPR=$(measure mesgate "$GW" "http://127.0.0.1:$GW_PORT$PAGE")
kill "$GW"

# The same page composed from the status index (loadtest/hit-index.toml, no Redis).
IX_IPR=""
if [[ "$INDEX" == 1 ]]; then
    MESGATE_LISTEN="127.0.0.1:$GW_PORT" MESGATE_UPSTREAM="http://127.0.0.1:$SIM_PORT" \
        MESGATE_REDIS_URL=off MESGATE_ADMIN_LISTEN="" \
        valgrind --tool=callgrind --callgrind-out-file="$OUT/index.cg.%p.out" \
        "$BIN/mesgate" --config loadtest/hit-index.toml >"$OUT/index.log" 2>&1 &
    IX=$!
    PIDS+=("$IX")
    wait_http "http://127.0.0.1:$GW_PORT$PAGE"
    # Until the preload is done the page takes the ordinary path.
    for _ in $(seq 240); do
        curl -fs -D - -o /dev/null "http://127.0.0.1:$GW_PORT$PAGE" | tr -d '\r' \
            | grep -qi '^x-cache: HIT-INDEX$' && break
        sleep 0.25
    done
    check_hit index "http://127.0.0.1:$GW_PORT$PAGE" x-cache HIT-INDEX
    cmp -s "$OUT/mesgate.body" "$OUT/index.body" || die "the index's page differs from the L1 hit's"
    IX_IPR=$(measure index "$IX" "http://127.0.0.1:$GW_PORT$PAGE")
    kill "$IX"
fi

NG_IPR=""
if (( HAVE_NGINX )); then
    prefix=$(mktemp -d "${TMPDIR:-/tmp}/profile-nginx.XXXXXX")
    mkdir -p "$prefix/cache"
    nginx_render hit.conf "$prefix/nginx.conf" "$prefix" "$NGINX_PORT" "127.0.0.1:$SIM_PORT" 10m
    valgrind --tool=callgrind --callgrind-out-file="$OUT/nginx.cg.%p.out" \
        "$NGINX_BIN" -c "$prefix/nginx.conf" -g 'daemon off; master_process off;' \
        >"$OUT/nginx.log" 2>&1 &
    NG=$!
    PIDS+=("$NG")
    wait_http "http://127.0.0.1:$NGINX_PORT$PAGE"
    check_hit nginx "http://127.0.0.1:$NGINX_PORT$PAGE" x-cache-status HIT
    cmp -s "$OUT/mesgate.body" "$OUT/nginx.body" || die "nginx and mesgate bodies differ"
    NG_IPR=$(measure nginx "$NG" "http://127.0.0.1:$NGINX_PORT$PAGE")
    kill "$NG"
fi

{
    echo "## Instructions per cache hit (callgrind, user space): $(date -u +%Y-%m-%dT%H:%M:%SZ), commit \`$(git rev-parse --short HEAD 2>/dev/null || echo '?')\`"
    echo
    echo "$N hits of \`$PAGE\` ($(wc -c <"$OUT/mesgate.body") bytes) over $CONNS connections, after $WARM unmeasured; \`N=$N CONNS=$CONNS bash loadtest/profile-hit.sh\`"
    echo
    echo "| target | instructions per hit | vs nginx |"
    echo "|---|---|---|"
    if [[ -n "$NG_IPR" ]]; then
        echo "| mesgate L1 | $GW_IPR | $(python3 -c "print(f'{$GW_IPR / $NG_IPR:.2f}x')") |"
        [[ -z "$IX_IPR" ]] || echo "| mesgate index | $IX_IPR | $(python3 -c "print(f'{$IX_IPR / $NG_IPR:.2f}x')") |"
        echo "| nginx proxy_cache (one process) | $NG_IPR | 1.00x |"
    else
        echo "| mesgate L1 | $GW_IPR | (nginx not measured) |"
        [[ -z "$IX_IPR" ]] || echo "| mesgate index | $IX_IPR | (nginx not measured) |"
    fi
    echo
    echo "Files: $OUT/"
} | tee "$OUT/table.md"
