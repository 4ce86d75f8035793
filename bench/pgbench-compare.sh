#!/usr/bin/env bash
# pgbench through pgsplit and through PgBouncer against the same leader in
# one run, both in transaction mode with the same pool size, alternating the
# two and taking the median of RUNS runs per cell. Cells: select-only with
# -M simple, extended and prepared; select-only with a new connection per
# transaction (-C) under SCRAM and md5 client auth; TPC-B-like with -M
# simple; at 1, 10, 50 and 200 clients. A direct connection is measured for
# reference. Prints TPS, average latency and pgsplit/PgBouncer ratios (of
# the medians, and of TPS run by run).
#
# This machine's speed drifts by 10-30% over a few seconds (other guests on
# the host), more than the difference being measured. So a run is cut into
# slices of SLICE seconds, and pgsplit's and PgBouncer's slices alternate
# (which goes first flips each time): both see the same drift. A run's TPS
# is its transactions over its measured time, its latency the
# transaction-weighted average. Above 50 clients a run is one slice,
# because logging in 200 clients takes a second by itself.
#
#   bench/pgbench-compare.sh            # 5 s per run in 1 s slices, 3 runs per cell
#   DURATION=10 RUNS=5 CLIENTS="10 50" bench/pgbench-compare.sh
#   ONLY="select-only simple scram" bench/pgbench-compare.sh   # cells matching a regex
#   SLICE_LOG=/tmp/slices.txt bench/pgbench-compare.sh         # and every slice's TPS
#
# Installs Debian's pgbouncer when missing. Traffic stays on loopback.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5}
SLICE=${SLICE:-1}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-"1 10 50 200"}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

start_leader "${SCALE:-10}"
start_pgsplit scram-sha-256; SPLIT_SCRAM=$SPLIT_PORT
start_pgsplit md5; SPLIT_MD5=$SPLIT_PORT
start_pgbouncer scram-sha-256; BOUNCER_SCRAM=$BOUNCER_PORT
start_pgbouncer md5; BOUNCER_MD5=$BOUNCER_PORT
BOUNCER_VERSION=$("$PGBOUNCER" --version | head -1 | awk '{print $2}')

# Which target a port is, for the slice log.
target_name() {
    case $1 in
        "$SPLIT_SCRAM") echo pgsplit-scram ;; "$SPLIT_MD5") echo pgsplit-md5 ;;
        "$BOUNCER_SCRAM") echo pgbouncer-scram ;; "$BOUNCER_MD5") echo pgbouncer-md5 ;;
        *) echo direct ;;
    esac
}

# One pgbench invocation: prints "transactions seconds latency_ms", or
# "n/a n/a n/a" when it fails. Seconds exclude the initial connection time.
# With SLICE_LOG set, also appends the time, target, clients, flags, TPS
# and login time of every invocation to that file.
slice() { # port clients flags seconds
    local out
    if ! out=$(PGPASSWORD=app-secret pgbench -n -h 127.0.0.1 -p "$1" -U app -c "$2" -j 2 -T "$4" $3 app 2>&1); then
        echo "n/a n/a n/a"; return
    fi
    local txns tps lat
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
    if [ -n "${SLICE_LOG:-}" ]; then
        printf '%s %s clients=%s flags="%s" tps=%s connect_ms=%s\n' "$(date +%T.%N | cut -c1-12)" "$(target_name "$1")" "$2" "$3" \
            "${tps:-n/a}" "$(sed -n 's/^initial connection time = \([0-9.]*\) ms/\1/p' <<<"$out")" >>"$SLICE_LOG"
    fi
    if grep -q "number of failed transactions: [1-9]" <<<"$out" || [ -z "$tps" ] || [ "${txns:-0}" = 0 ]; then
        echo "n/a n/a n/a"
    else
        python3 -c 'import sys; n,t,l=map(float,sys.argv[1:]); print(int(n), n/t, l)' "$txns" "$tps" "$lat"
    fi
}

# One run of pgsplit and one of PgBouncer, slice by slice in turn: prints
# "split_tps split_lat bouncer_tps bouncer_lat" (n/a for a failed run).
# Which of the two goes first flips from slice to slice and from run to
# run (pgsplit first in odd runs), so that neither always runs on the
# heels of the other or always first after a change of cell.
run_pair() { # split_port bouncer_port clients flags run
    local seconds=$SLICE slices
    [ "$3" -gt 50 ] && seconds=$DURATION
    slices=$(( (DURATION + seconds - 1) / seconds ))
    local a=() b=()
    for i in $(seq "$slices"); do
        if (( ($5 + i) % 2 == 0 )); then
            a+=("$(slice "$1" "$3" "$4" "$seconds")")
            b+=("$(slice "$2" "$3" "$4" "$seconds")")
        else
            b+=("$(slice "$2" "$3" "$4" "$seconds")")
            a+=("$(slice "$1" "$3" "$4" "$seconds")")
        fi
    done
    echo "$(combine "${a[@]}") $(combine "${b[@]}")"
}

# Slices "transactions seconds latency" to "tps latency" for the whole run.
combine() {
    python3 -c '
import sys
rows = [a.split() for a in sys.argv[1:]]
if not rows or any("n/a" in r for r in rows):
    print("n/a n/a")
else:
    n = sum(float(r[0]) for r in rows)
    t = sum(float(r[1]) for r in rows)
    print(f"{n / t:.3f} {sum(float(r[0]) * float(r[2]) for r in rows) / n:.3f}")' "$@"
}

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x!="n/a"]; print(f"{statistics.median(v):.3f}" if len(v)==len(sys.argv[1:]) and v else "n/a")' "$@"; }
ratio() { python3 -c 'import sys; a,b=sys.argv[1:]; print("n/a" if "n/a" in (a,b) else f"{float(a)/float(b):.2f}")' "$1" "$2"; }

printf '\npgbench, %s s per run in alternating %s s slices (one slice above 50 clients), median of %s runs, scale %s, pool_size %s, transaction pooling\n' "$DURATION" "$SLICE" "$RUNS" "${SCALE:-10}" "$POOL_SIZE"
printf 'PostgreSQL %s, PgBouncer %s, %s cores\n\n' "$("$PGBIN/postgres" --version | awk '{print $3}')" "$BOUNCER_VERSION" "$(nproc)"
printf '| workload | mode | auth | clients | direct TPS | pgsplit TPS | PgBouncer TPS | TPS ratio | pgsplit lat ms | PgBouncer lat ms | latency ratio | TPS ratio of each run |\n'
printf '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
cell() { # workload mode auth flags split_port bouncer_port
    local workload=$1 mode=$2 auth=$3 flags=$4 sp=$5 bp=$6
    [[ -n "${ONLY:-}" && ! "$workload $mode $auth" =~ $ONLY ]] && return
    for c in $CLIENTS; do
        local st=() sl=() bt=() bl=() dt=() runs=()
        for r in $(seq "$RUNS"); do
            read -r t l t2 l2 <<<"$(run_pair "$sp" "$bp" "$c" "$flags" "$r")"
            st+=("$t"); sl+=("$l"); bt+=("$t2"); bl+=("$l2"); runs+=("$(ratio "$t" "$t2")")
        done
        read -r t _ <<<"$(combine "$(slice "$PG_PORT" "$c" "$flags" "$DURATION")")"; dt+=("$t")
        local s_tps s_lat b_tps b_lat
        s_tps=$(median "${st[@]}"); s_lat=$(median "${sl[@]}")
        b_tps=$(median "${bt[@]}"); b_lat=$(median "${bl[@]}")
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$workload" "$mode" "$auth" "$c" \
            "$(median "${dt[@]}" | cut -d. -f1)" "$(cut -d. -f1 <<<"$s_tps")" "$(cut -d. -f1 <<<"$b_tps")" \
            "$(ratio "$s_tps" "$b_tps")" "$s_lat" "$b_lat" "$(ratio "$s_lat" "$b_lat")" "$(IFS=/; echo "${runs[*]}")"
    done
}
cell select-only simple scram "-S -M simple" "$SPLIT_SCRAM" "$BOUNCER_SCRAM"
cell select-only extended scram "-S -M extended" "$SPLIT_SCRAM" "$BOUNCER_SCRAM"
cell select-only prepared scram "-S -M prepared" "$SPLIT_SCRAM" "$BOUNCER_SCRAM"
cell select-only "-C simple" scram "-S -C -M simple" "$SPLIT_SCRAM" "$BOUNCER_SCRAM"
cell select-only "-C simple" md5 "-S -C -M simple" "$SPLIT_MD5" "$BOUNCER_MD5"
cell tpcb-like simple scram "-M simple" "$SPLIT_SCRAM" "$BOUNCER_SCRAM"
echo
echo "n/a: the run failed (PgBouncer before 1.21 has no prepared statements in transaction mode)."
