#!/usr/bin/env bash
# Two pgsplit builds and PgBouncer in front of the same leader, one
# pgbench run of each in turn, repeated: the way to tell whether a change
# to the hot path helps on a machine whose noise between runs is larger
# than the change. Prints per run and as medians: TPS, average latency,
# and each proxy's CPU per transaction (user + system, and user alone).
#
#   A=/tmp/pgsplit-before B=target/release/pgsplit bench/ab-compare.sh [CLIENTS] [SECONDS] [ROUNDS] [pgbench args...]
#   A=... B=... bench/ab-compare.sh 1 4 5 -S -M prepared
#
# Defaults: 10 clients, 4 s runs, 5 rounds, select-only (-S).
# Client logins use md5 unless AUTH says otherwise (AUTH=scram-sha-256):
# the proxy CPU counted here includes the logins of pgbench's clients,
# and PgBouncer derives SCRAM keys on every login (some 65 million
# instructions each), which would land in its per-transaction figure.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
: "${A:?A=path of the first pgsplit binary}" "${B:?B=path of the second pgsplit binary}"
CLIENTS=${1:-10}
SECONDS_PER_RUN=${2:-4}
ROUNDS=${3:-5}
shift 3 || shift $#
EXTRA=("$@")
[ ${#EXTRA[@]} -eq 0 ] && EXTRA=(-S)

AUTH=${AUTH:-md5}
start_leader 10
PGSPLIT_BIN=$A start_pgsplit "$AUTH" a; PORT_A=$SPLIT_PORT PID_A=$SPLIT_PID
PGSPLIT_BIN=$B start_pgsplit "$AUTH" b; PORT_B=$SPLIT_PORT PID_B=$SPLIT_PID
start_pgbouncer "$AUTH"; PORT_C=$BOUNCER_PORT PID_C=$BOUNCER_PID
sleep 1
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15, $14}' "/proc/$1/stat"; } # total, user

run() { # PORT SECONDS
    PGPASSWORD=app-secret pgbench -n -c "$CLIENTS" -j 2 -T "$2" "${EXTRA[@]}" -h 127.0.0.1 -p "$1" -U app app 2>&1
}
for port in $PORT_A $PORT_B $PORT_C; do run "$port" 1 >/dev/null || true; done

echo "proxy tps latency_ms cpu_us_per_txn user_us_per_txn"
for _ in $(seq "$ROUNDS"); do
    for name in A B PgBouncer; do
        case $name in A) port=$PORT_A pid=$PID_A ;; B) port=$PORT_B pid=$PID_B ;; *) port=$PORT_C pid=$PID_C ;; esac
        read -r t0 u0 <<<"$(ticks "$pid")"
        out=$(run "$port" "$SECONDS_PER_RUN") || { echo "$name failed: $out" >&2; continue; }
        read -r t1 u1 <<<"$(ticks "$pid")"
        tps=$(awk '/^tps/ {print $3}' <<<"$out")
        lat=$(awk '/latency average/ {print $4}' <<<"$out")
        txns=$(awk '/processed:/ {print $NF}' <<<"$out" | cut -d/ -f1)
        awk -v n="$name" -v tps="$tps" -v lat="$lat" -v t=$((t1 - t0)) -v u=$((u1 - u0)) -v hz="$HZ" -v txns="$txns" \
            'BEGIN {printf "%s %.0f %s %.1f %.1f\n", n, tps, lat, t / hz * 1e6 / txns, u / hz * 1e6 / txns}'
    done
done | tee "$WORK/runs.txt"
echo
echo "medians of $ROUNDS runs: clients=$CLIENTS args=${EXTRA[*]}"
python3 - "$WORK/runs.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
med = {}
for name in ("A", "B", "PgBouncer"):
    runs = [r for r in rows if r[0] == name]
    if runs:
        med[name] = [statistics.median(float(r[i]) for r in runs) for i in range(1, 5)]
        print("%-9s tps %8.0f  latency %.3f ms  cpu %5.1f us/txn  user %5.1f us/txn" % (name, *med[name]))
if "PgBouncer" in med:
    for name in ("A", "B"):
        if name in med:
            print("%s / PgBouncer: tps %.2f  latency %.2fx  cpu %.2fx" % (
                name, med[name][0] / med["PgBouncer"][0], med[name][1] / med["PgBouncer"][1], med[name][2] / med["PgBouncer"][2]))
PY
