#!/usr/bin/env bash
# benches/once/run.sh: "one pass" of `pollhook once --send` against urlwatch
# 2.29 and wrk, on nginx serving 1,000 JSON files of ~1.5 KiB, 10 % of which
# change between passes.
#
# Usage (as root on Debian; installs nginx, wrk, time and urlwatch==2.29 if
# missing, and builds pollhook with `cargo build --release --locked`):
#
#   benches/once/run.sh                 # 5 timed runs of each, then a table
#   RUNS=9 benches/once/run.sh          # more runs (the median is reported)
#
# Environment (all optional):
#   RUNS=5          timed passes per tool (each: change 10 %, then one pass)
#   FILES=1000      JSON files / endpoints / urlwatch jobs
#   CHANGED=        files changed before each timed pass (default FILES/10)
#   SEED=42         the data and the changes are deterministic from it
#   PORT=           nginx's port on 127.0.0.1 (default: a free one)
#   WRK_DURATION=2  seconds per wrk run (RUNS runs)
#   TOOLS="pollhook urlwatch wrk"   which to measure
#   BREAKDOWN=0     1: extra pollhook passes afterwards that show where the
#                   time goes: start-up alone, `once` without --send vs
#                   with it, one pass with debug logging (phases from its
#                   timestamps), one under `strace -f -ttt` (phases, fsyncs)
#                   and one under `strace -f -c` (installs strace)
#   KEEP=0          1: keep the work dir (it is kept anyway on failure)
#   SKIP_INSTALL=0  1: do not install anything, SKIP_BUILD=0  1: do not build
#
# What each timed pass is:
#   pollhook: `pollhook once --send -c <config>`: polls the 1,000 endpoints
#     (ETag/Last-Modified from the previous pass: 900 304s and 100 200s),
#     stores the 100 changes in sled and delivers 100 webhooks to nginx's
#     `POST /hook` (204). Verified: 100 event lines on stdout, 100 hooks in
#     nginx's hook log.
#   urlwatch: `urlwatch --urls ... --config ... --cache ...` with its fixed
#     10 worker threads (worker.py's MAX_WORKERS; there is no option), only
#     the stdout reporter. Verified: 100 CHANGED. It gets (nearly) 1,000
#     200s a pass: its If-Modified-Since is the time of its last check,
#     which nginx's default `if_modified_since exact` takes for a match
#     only when it is the file's mtime to the second, and then nginx does
#     not look at If-None-Match.
#   wrk: 10 connections (2 threads) cycling through the same 1,000 URLs for
#     WRK_DURATION seconds; the figure is the time for 1,000 requests at the
#     measured rate (plain GETs: all 200s).
# Wall time is taken around `/usr/bin/time -v` with bash's EPOCHREALTIME
# (time -v itself rounds to 10 ms); peak RSS and CPU are from time -v.
# Each pass starts a fresh process, as cron does. Only 127.0.0.1 is used.
# The report (markdown) goes to stdout, progress to stderr; the work dir
# (/tmp/pollhook-bench.*) holds every pass's output and nginx's logs.
# Exit status: 0, or 1 when a pass failed or missed an expected event.
set -euo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
RUNS=${RUNS:-5}
FILES=${FILES:-1000}
CHANGED=${CHANGED:-$((FILES / 10))}
SEED=${SEED:-42}
PORT=${PORT:-}
WRK_DURATION=${WRK_DURATION:-2}
TOOLS=${TOOLS:-"pollhook urlwatch wrk"}
BREAKDOWN=${BREAKDOWN:-0}
KEEP=${KEEP:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
URLWATCH_VERSION=2.29

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
wants() { [[ " $TOOLS " == *" $1 "* ]]; }

# ------------------------------------------------------------ installing --
apt_updated=0
apt_install() { # PACKAGE...: installs those not installed yet
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get"
    if ((!apt_updated)); then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    # Where services are started, Debian's nginx package starts the system
    # nginx on :80; this benchmark never uses it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_deps() {
    local pkgs=(time python3)
    wants pollhook || wants urlwatch || wants wrk && pkgs+=(nginx)
    wants wrk && pkgs+=(wrk)
    ((BREAKDOWN)) && pkgs+=(strace)
    apt_install "${pkgs[@]}"
    if wants urlwatch; then
        if [[ $(urlwatch --version 2>/dev/null || true) != "urlwatch $URLWATCH_VERSION" ]]; then
            python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
            log "pip install urlwatch==$URLWATCH_VERSION"
            # Debian's own Python refuses plain `pip install` (PEP 668).
            python3 -m pip install -q "urlwatch==$URLWATCH_VERSION" 2>/dev/null ||
                python3 -m pip install -q --break-system-packages "urlwatch==$URLWATCH_VERSION"
            hash -r
        fi
        [[ $(urlwatch --version) == "urlwatch $URLWATCH_VERSION" ]] ||
            die "urlwatch --version is not $URLWATCH_VERSION"
    fi
}

if ((!SKIP_INSTALL)); then
    install_deps
fi
PATH=$PATH:/usr/sbin:/sbin
for tool in python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/pollhook
if wants pollhook; then
    if ((!SKIP_BUILD)); then
        command -v cargo >/dev/null || die "cargo is missing (install Rust with rustup)"
        log "cargo build --release --locked (in $ROOT)"
        (cd "$ROOT" && cargo build --release --locked --quiet)
    fi
    [[ -x $BIN ]] || die "no $BIN"
fi

# -------------------------------------------------------------- work dir --
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pollhook-bench.XXXXXX")
# nginx's workers read the files as the invoking user, but stay safe if not.
chmod 755 "$WORK"
NGINX_PID_FILE=$WORK/nginx/nginx.pid

# shellcheck disable=SC2317 # (run by the trap)
cleanup() {
    local status=$?
    if [[ -s $NGINX_PID_FILE ]]; then
        local pid
        pid=$(<"$NGINX_PID_FILE")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if ((status != 0)); then
        log "failed (exit $status); the work dir is kept: $WORK"
    elif ((KEEP)); then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
gen() { python3 "$HERE/gen.py" --seed "$SEED" --files "$FILES" "$@"; }

if [[ -z $PORT ]]; then
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
log "work dir $WORK, nginx on 127.0.0.1:$PORT, $FILES files, $CHANGED changed per pass, $RUNS runs"

# ------------------------------------------------------------------ data --
gen generate "$WORK/www/pollhook" >"$WORK/generate.txt"
cp -a "$WORK/www/pollhook" "$WORK/www/urlwatch"
log "data: $(<"$WORK/generate.txt") (per tree: pollhook's and wrk's, urlwatch's)"

# ----------------------------------------------------------------- nginx --
mkdir -p "$WORK/nginx/tmp"
if ((EUID == 0)); then user_line="user root root;"; else user_line=""; fi
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$PORT|g" -e "s|@USER@|$user_line|" \
    "$HERE/nginx.conf.in" >"$WORK/nginx/nginx.conf"
NGINX=(nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log")
"${NGINX[@]}" -t -q || die "nginx -t failed"
"${NGINX[@]}"
for _ in $(seq 100); do
    [[ -s $NGINX_PID_FILE ]] && (: <"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
done
[[ -s $NGINX_PID_FILE ]] || die "nginx did not start: $(tail -5 "$WORK/nginx/error.log")"
python3 - "$PORT" <<'EOF' || die "nginx does not serve the files as expected"
import sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
with urllib.request.urlopen(f"{base}/pollhook/products/p0001.json") as r:
    assert r.status == 200 and r.headers["ETag"] and r.headers["Last-Modified"], r.headers
    assert r.headers["Content-Type"] == "application/json", r.headers["Content-Type"]
req = urllib.request.Request(f"{base}/hook", data=b"{}", method="POST")
with urllib.request.urlopen(req) as r:
    assert r.status == 204, r.status
EOF

# Lines of nginx's logs already counted.
get_seen=0
hook_seen=0
# Waits out the access log's flush interval (100 ms), then sets RESPONSES
# to what nginx answered since the last call: "200:N 304:N other:N", and
# HOOKS to the number of 204s on /hook.
new_responses() {
    sleep 0.3
    local get_total hook_total
    get_total=$(wc -l <"$WORK/nginx/get.log")
    hook_total=$(wc -l <"$WORK/nginx/hook.log")
    RESPONSES=$(tail -n +$((get_seen + 1)) "$WORK/nginx/get.log" | head -n $((get_total - get_seen)) |
        awk '$2 == "GET" { n[$1]++ } END { printf "200:%d 304:%d other:%d", n[200], n[304], NR - n[200] - n[304] }')
    HOOKS=$(tail -n +$((hook_seen + 1)) "$WORK/nginx/hook.log" | head -n $((hook_total - hook_seen)) |
        awk '$1 == 204 { n++ } END { print n + 0 }')
    get_seen=$get_total
    hook_seen=$hook_total
}
new_responses # the check above

RESULTS=$WORK/results.tsv
: >"$RESULTS"
status=0

# timed LABEL OUT ERR COMMAND...: runs COMMAND under /usr/bin/time -v;
# sets WALL (s), RSS_KB, USER_S, SYS_S.
timed() {
    local label=$1 out=$2 err=$3 start end
    shift 3
    start=$EPOCHREALTIME
    if ! /usr/bin/time -v -o "$WORK/time.txt" "$@" >"$out" 2>"$err"; then
        log "$label failed; its stderr ends with:"
        tail -20 "$err" >&2
        exit 1
    fi
    end=$EPOCHREALTIME
    WALL=$(python3 -c "print(f'{$end - $start:.4f}')")
    RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/time.txt")
    USER_S=$(awk -F': ' '/User time/ { print $2 }' "$WORK/time.txt")
    SYS_S=$(awk -F': ' '/System time/ { print $2 }' "$WORK/time.txt")
}

# record TOOL RUN EVENTS RESPONSES
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$WALL" "$RSS_KB" "$USER_S" "$SYS_S" "$3" "$4" >>"$RESULTS"
}

# ------------------------------------------------------------- pollhook --
PH_CONFIG=$WORK/pollhook/config.toml
mkdir -p "$WORK/pollhook"
gen pollhook-config --port "$PORT" --prefix /pollhook --state-dir "$WORK/pollhook/state" \
    --per-host 10 --max-concurrent-polls 64 --out "$PH_CONFIG"

# pollhook_pass LABEL RUN EXPECTED
pollhook_pass() {
    local label=$1 run=$2 expected=$3 out=$WORK/pollhook/out.$1.$2 err=$WORK/pollhook/err.$1.$2
    timed "pollhook $label $run" "$out" "$err" "$BIN" once --send -c "$PH_CONFIG"
    local events delivered
    events=$(grep -c '"type"' "$out" || true)
    new_responses
    delivered=$(sed -n 's/^target hook: \([0-9]*\) delivered.*/\1/p' "$err")
    record "pollhook-$label" "$run" "$HOOKS/$expected" "$RESPONSES printed:$events"
    log "pollhook $label $run: ${WALL}s, ${RSS_KB} KB, $RESPONSES, $events events printed, ${delivered:-?} delivered, $HOOKS hooks received"
    if [[ $HOOKS != "$expected" || $events != "$expected" ]]; then
        log "pollhook $label $run: expected $expected events and hooks"
        status=1
    fi
}

# ------------------------------------------------------------- urlwatch --
UW=$WORK/urlwatch
mkdir -p "$UW/home" "$UW/config" "$UW/cache"
if wants urlwatch; then
    gen urlwatch-config --port "$PORT" --prefix /urlwatch --urls "$UW/urls.yaml" --config "$UW/config.yaml"
    # The script itself, not a wrapper around it (pyenv's shims are bash).
    URLWATCH=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/urlwatch
    [[ -x $URLWATCH ]] || URLWATCH=$(command -v urlwatch)
fi

# urlwatch_pass LABEL RUN EXPECTED_CHANGED
urlwatch_pass() {
    local label=$1 run=$2 expected=$3 out=$UW/out.$1.$2 err=$UW/err.$1.$2
    timed "urlwatch $label $run" "$out" "$err" \
        env HOME="$UW/home" XDG_CONFIG_HOME="$UW/config" XDG_CACHE_HOME="$UW/cache" \
        "$URLWATCH" --urls "$UW/urls.yaml" --config "$UW/config.yaml" \
        --hooks "$UW/hooks.py" --cache "$UW/cache.db"
    local changed new errors
    changed=$(grep -cE '^[0-9]+\. CHANGED: ' "$out" || true)
    new=$(grep -cE '^[0-9]+\. NEW: ' "$out" || true)
    errors=$(grep -cE '^[0-9]+\. ERROR: ' "$out" || true)
    new_responses
    record "urlwatch-$label" "$run" "$changed/$expected" "$RESPONSES"
    log "urlwatch $label $run: ${WALL}s, ${RSS_KB} KB, $RESPONSES, $changed changed, $new new, $errors errors"
    if [[ $changed != "$expected" || $errors != 0 ]]; then
        log "urlwatch $label $run: expected $expected changed, no errors"
        status=1
    fi
}

# change TOOL RUN: the same 10 % in that tool's tree for a given run.
change() { gen change "$WORK/www/$1" change "$2" --count "$CHANGED" >"$WORK/changed.$1.$2"; }

# The first pass of each: everything is new (pollhook stores 1,000
# baselines silently; urlwatch reports 1,000 NEW).
wants pollhook && pollhook_pass first 0 0
wants urlwatch && urlwatch_pass first 0 0

for run in $(seq "$RUNS"); do
    # Alternate who goes first, so that drifting background load is shared.
    order="pollhook urlwatch"
    ((run % 2)) || order="urlwatch pollhook"
    for tool in $order; do
        wants "$tool" || continue
        change "$tool" "$run"
        "${tool}_pass" changed "$run" "$CHANGED"
    done
done

# A pass that finds nothing new (all 304 for pollhook), once each.
wants pollhook && pollhook_pass unchanged 1 0
wants urlwatch && urlwatch_pass unchanged 1 0

# ------------------------------------------------------------------ wrk --
if wants wrk; then
    for run in $(seq "$RUNS"); do
        BENCH_FILES=$FILES BENCH_PREFIX=/pollhook wrk -t2 -c10 -d"${WRK_DURATION}s" \
            -s "$HERE/paths.lua" "http://127.0.0.1:$PORT/" >"$WORK/wrk.$run" 2>&1 ||
            die "wrk failed: $(tail -5 "$WORK/wrk.$run")"
        line=$(grep '^WRK_RESULT' "$WORK/wrk.$run") || die "no WRK_RESULT from wrk"
        field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$line"; }
        requests=$(field requests) duration_us=$(field duration_us)
        errors=$(field errors) non2xx=$(field non2xx)
        p50_us=$(field p50_us) p99_us=$(field p99_us)
        ((errors == 0 && non2xx == 0)) || die "wrk: $errors errors, $non2xx non-2xx"
        WALL=$(python3 -c "print(f'{$FILES * $duration_us / $requests / 1e6:.4f}')")
        RSS_KB=0 USER_S=-1 SYS_S=-1
        new_responses
        [[ $RESPONSES == *" 304:0 other:0" ]] || die "wrk: nginx answered $RESPONSES"
        record wrk "$run" "-" "200 only"
        log "wrk $run: $requests requests in $((duration_us / 1000)) ms: ${WALL}s per $FILES (p50 ${p50_us} us, p99 ${p99_us} us)"
    done
fi

# ------------------------------------------------------------ breakdown --
# Extra pollhook passes, after the timed ones, each after a fresh 10 %
# change (not in the table above):
#   1. `pollhook --version` and `pollhook check`: process start-up alone,
#      and with the config parsed (no store).
#   2. `pollhook once` without --send, then `once --send`, on the same
#      change: the dry pass polls and diffs and writes nothing, so the
#      difference is the commits and the deliveries.
#   3. `once --send` with debug logging: phases from its log's timestamps.
#   4. `once --send` under `strace -f -ttt -T`: phases and fsyncs.
#   5. `once --send` under `strace -f -c`: the system calls.
BD=$WORK/breakdown
if ((BREAKDOWN)) && wants pollhook; then
    command -v strace >/dev/null || die "strace is missing"
    mkdir -p "$BD"
    round=$((RUNS + 1))
    {
        echo "| pass (untraced) | wall | peak RSS | CPU user+sys |"
        echo "|---|---:|---:|---:|"
        bd_row() { echo "| $1 | $(python3 -c "print(f'{$WALL * 1000:.1f} ms')") | $((RSS_KB / 1000)) MB | $(python3 -c "print(f'{($USER_S + $SYS_S) * 1000:.0f} ms')") |"; }
        timed version "$BD/out.version" "$BD/err.version" "$BIN" --version
        bd_row "\`pollhook --version\` (process start-up)"
        timed check "$BD/out.check" "$BD/err.check" "$BIN" check -c "$PH_CONFIG"
        bd_row "\`pollhook check\` (start-up, config of 1,000 endpoints parsed)"
        change pollhook "$round"
        timed dry "$BD/out.dry" "$BD/err.dry" "$BIN" once -c "$PH_CONFIG"
        new_responses
        bd_row "\`once\` without --send after a 10 % change: polls and diffs, no writes ($RESPONSES)"
        timed send "$BD/out.send" "$BD/err.send" "$BIN" once --send -c "$PH_CONFIG"
        new_responses
        bd_row "\`once --send\` on the same change: + commits and $HOOKS deliveries"
    } >"$BD/untraced.md"
    log "breakdown: untraced passes done"

    change pollhook $((round + 1))
    start=$EPOCHREALTIME
    "$BIN" --log-level debug once --send -c "$PH_CONFIG" >/dev/null 2>"$BD/err.debug"
    end=$EPOCHREALTIME
    new_responses
    python3 "$HERE/breakdown.py" log "$BD/err.debug" "$start" "$end" >"$BD/log.md"
    log "breakdown: debug-log pass done"

    change pollhook $((round + 2))
    strace -f -ttt -T -s 40 -o "$BD/strace-t.txt" "$BIN" once --send -c "$PH_CONFIG" \
        >/dev/null 2>"$BD/err.strace-t"
    new_responses
    python3 "$HERE/breakdown.py" strace "$BD/strace-t.txt" >"$BD/strace.md"
    log "breakdown: strace -ttt pass done"

    change pollhook $((round + 3))
    strace -f -c -o "$BD/strace-c.txt" "$BIN" once --send -c "$PH_CONFIG" \
        >/dev/null 2>"$BD/err.strace-c"
    new_responses
    log "breakdown: strace -c pass done"
fi

# --------------------------------------------------------------- report --
echo
echo "## pollhook once: $FILES endpoints, $CHANGED changed, median of $RUNS runs"
echo
echo "$(nproc) CPUs, load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
    "pollhook $("$BIN" --version 2>/dev/null | cut -d' ' -f2) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))," \
    "$(nginx -v 2>&1 | sed 's/.*: //'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(urlwatch --version 2>/dev/null || echo 'no urlwatch')"
echo
gen report "$RESULTS"
if [[ -s $BD/strace-c.txt ]]; then
    echo
    echo "### pollhook: where a pass's time goes"
    echo
    cat "$BD/untraced.md"
    echo
    cat "$BD/log.md"
    echo
    echo "Under strace (slower than untraced; for the shares and the counts):"
    echo
    cat "$BD/strace.md"
    echo
    echo "\`strace -f -c\` of one more pass (futex and epoll_wait are threads waiting):"
    echo
    echo '```'
    head -22 "$BD/strace-c.txt"
    echo '```'
fi
((status == 0)) || log "some pass did not deliver what was expected (see above)"
exit "$status"
