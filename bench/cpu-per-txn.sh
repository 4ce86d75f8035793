#!/usr/bin/env bash
# CPU time each proxy spends per transaction, PgBouncer and pgsplit in
# front of the same leader: a steadier figure than TPS on a small machine,
# where pgbench, the proxy and PostgreSQL share the same cores.
#
#   bench/cpu-per-txn.sh [CLIENTS] [TRANSACTIONS_PER_CLIENT] [pgbench args...]
#
# Prints microseconds of proxy CPU (user + system) per transaction and
# the pgsplit / PgBouncer ratio. With STRACE=1 also counts system calls.
# Client logins use md5 unless AUTH says otherwise (AUTH=scram-sha-256):
# the proxy CPU counted here includes the logins of pgbench's clients,
# and PgBouncer derives SCRAM keys on every login (some 65 million
# instructions each), which would land in its per-transaction figure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CLIENTS=${1:-10}
TXNS=${2:-5000}
shift 2 || true
EXTRA=("$@")
[ ${#EXTRA[@]} -eq 0 ] && EXTRA=(-S)

AUTH=${AUTH:-md5}
start_leader 10
start_pgsplit "$AUTH"
start_pgbouncer "$AUTH"
sleep 1
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk "{print \$14 + \$15}" "/proc/$1/stat"; }
split_ticks() { awk "{print \$14, \$15}" "/proc/$1/stat"; }
# Context switches of every thread of a process (voluntary + involuntary).
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }

measure() { # NAME PID PORT
    local before after us
    PGPASSWORD=app-secret pgbench -n -c "$CLIENTS" -j 2 -t 200 "${EXTRA[@]}" -h 127.0.0.1 -p "$3" -U app app >/dev/null 2>&1
    if [ "${STRACE:-0}" = 1 ]; then
        strace -c -f -p "$2" -o "$WORK/strace-$1" & local st=$!
        sleep 0.5
    fi
    before=$(cpu_ticks "$2"); local ub; ub=$(split_ticks "$2"); local sw; sw=$(switches "$2")
    PGPASSWORD=app-secret pgbench -n -c "$CLIENTS" -j 2 -t "$TXNS" "${EXTRA[@]}" -h 127.0.0.1 -p "$3" -U app app >"$WORK/out-$1" 2>&1
    after=$(cpu_ticks "$2")
    echo "$1 user/system ticks before: $ub after: $(split_ticks "$2"); context switches per txn: $(awk -v a="$sw" -v b="$(switches "$2")" -v n=$((CLIENTS * TXNS)) 'BEGIN{printf "%.2f", (b - a) / n}')" >&2
    if [ "${STRACE:-0}" = 1 ]; then kill -INT $st; wait $st || true; fi
    us=$(awk -v t=$((after - before)) -v hz="$TICKS" -v n=$((CLIENTS * TXNS)) 'BEGIN{printf "%.1f", t / hz * 1e6 / n}')
    echo "$us"
}

split_us=$(measure pgsplit "$SPLIT_PID" "$SPLIT_PORT")
bouncer_us=$(measure pgbouncer "$BOUNCER_PID" "$BOUNCER_PORT")
echo "clients=$CLIENTS txns/client=$TXNS args=${EXTRA[*]}"
echo "pgsplit   CPU us/txn: $split_us"
echo "PgBouncer CPU us/txn: $bouncer_us"
awk -v a="$split_us" -v b="$bouncer_us" 'BEGIN{printf "ratio pgsplit/PgBouncer: %.2f\n", a / b}'
if [ "${STRACE:-0}" = 1 ]; then
    for n in pgsplit pgbouncer; do echo "== $n syscalls"; head -15 "$WORK/strace-$n"; done
fi
