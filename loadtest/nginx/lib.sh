# shellcheck shell=bash
# Helpers for the nginx proxy_cache peer of loadtest/bench-hit.sh and loadtest/storm.sh.
# Sourced, not run. Needs: a `die` function in the caller.

NGINX_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The nginx to use: $NGINX_BIN (a name or a path) if set, else nginx on PATH, else
# /usr/sbin/nginx (not on a non-root PATH). Prints nothing when there is none.
nginx_resolve() {
    local cand=${NGINX_BIN:-nginx}
    cand=$(command -v "$cand" 2>/dev/null || true)
    if [[ -z "$cand" && -z "${NGINX_BIN:-}" && -x /usr/sbin/nginx ]]; then
        cand=/usr/sbin/nginx
    fi
    echo "$cand"
}

# Sets NGINX_BIN to a usable nginx, installing nginx-light first when NGINX_INSTALL=1 (the
# default when CI=true) and we are root. Returns 1, after a loud note on stderr that says
# how to install it, when there is none: the caller then leaves the nginx target out.
nginx_find() {
    local who=$1 found install
    install=${NGINX_INSTALL:-0}
    [[ "${CI:-}" == true && -z "${NGINX_INSTALL:-}" ]] && install=1
    found=$(nginx_resolve)
    if [[ -z "$found" && "$install" == 1 ]]; then
        if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            echo "$who: nginx missing, installing nginx-light (NGINX_INSTALL=1)" >&2
            { DEBIAN_FRONTEND=noninteractive apt-get update \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light; } >&2 \
                || echo "$who: apt-get install nginx-light failed" >&2
            found=$(nginx_resolve)
        else
            echo "$who: NGINX_INSTALL=1 needs root and apt-get" >&2
        fi
    fi
    if [[ -z "$found" ]]; then
        {
            echo
            echo "################################################################################"
            echo "## $who: nginx NOT FOUND (${NGINX_BIN:-nginx}): the nginx proxy_cache target is"
            echo "## SKIPPED in this run."
            echo "## Install it with:   apt-get update && apt-get install -y nginx-light"
            echo "## (or rerun as root with NGINX_INSTALL=1; NGINX=0 leaves nginx out on purpose)"
            echo "################################################################################"
            echo
        } >&2
        return 1
    fi
    NGINX_BIN=$found
    # shellcheck disable=SC2034  # read by the callers
    NGINX_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's|^nginx version: ||')
}

# nginx_render TEMPLATE OUT PREFIX PORT UPSTREAM VALID: writes a config for one run: the
# @COMMON@ line becomes common.conf's text, the @NAME@ placeholders their values.
nginx_render() {
    local template=$1 out=$2 prefix=$3 port=$4 upstream=$5 valid=$6 user=""
    [[ $EUID -eq 0 ]] && user="user root;"
    awk -v common="$NGINX_DIR/common.conf" '
        $0 == "@COMMON@" { while ((getline line < common) > 0) print line; next }
        { print }' "$NGINX_DIR/$template" \
        | sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" -e "s|@UPSTREAM@|$upstream|g" \
              -e "s|@VALID@|$valid|g" -e "s|@USER@|$user|g" >"$out"
    mkdir -p "$prefix/cache"
    if grep -q '@[A-Z]*@' "$out"; then
        die "unreplaced placeholder in $out: $(grep -o '@[A-Z]*@' "$out" | head -n1)"
    fi
    "$NGINX_BIN" -t -q -p "$prefix" -c "$out" -g 'daemon off;' 2>"$prefix/nginx-t.log" \
        || die "nginx rejects $out: $(cat "$prefix/nginx-t.log")"
}

# The whole nginx's CPU in clock ticks: the master (utime+stime, plus cutime+cstime: the
# children it has reaped, such as the cache loader that exits a minute after the start)
# and every live child (workers, cache manager, cache loader).
nginx_ticks() {
    local master=$1 total=0 stat child
    stat=$(<"/proc/$master/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat       # $1 is field 3: utime 14, stime 15, cutime 16, cstime 17
    total=$(( ${12} + ${13} + ${14} + ${15} ))
    for child in $(pgrep -P "$master" || true); do
        stat=$(cat "/proc/$child/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        # shellcheck disable=SC2086
        set -- $stat
        total=$(( total + ${12} + ${13} ))
    done
    echo "$total"
}
