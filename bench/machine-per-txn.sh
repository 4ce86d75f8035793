#!/usr/bin/env bash
# Where a transaction's CPU goes on the whole machine, pgsplit against
# PgBouncer in front of the same leader, alternating runs: TPS, the share
# of time both cores sat idle, CPU per transaction of the proxy, of the
# PostgreSQL processes and of pgbench, how long the proxy sat runnable
# waiting for a CPU (its run delay, from schedstat), context switches per
# transaction, TCP segments per transaction, how many backends did the
# work, how often the proxy's and PostgreSQL's threads moved from one
# CPU to another, and how much of pgbench's and PostgreSQL's CPU time was
# on the proxy's CPU (bench/placement.py). On a machine that pgbench,
# the proxy and PostgreSQL share, TPS follows all of these together, not
# the proxy's CPU alone (BENCHMARKS, session 13: 1 µs more of it per
# transaction cost no measurable TPS; session 23: a round runs fastest
# with PostgreSQL mostly on the CPU the proxy is not on).
#
#   bench/machine-per-txn.sh                      # 10 clients, select-only extended, 3 rounds of 4 s
#   CLIENTS=50 ROUNDS=10 SECS=3 ARGS="-S -M simple" bench/machine-per-txn.sh
#   B=/tmp/pgsplit-other bench/machine-per-txn.sh # a second pgsplit build in each round
#   B_ENV="env PGSPLIT_PROXY_YIELD_BEFORE_SLEEP=true" bench/machine-per-txn.sh   # or a second setting
#
# pgbench's CPU is its whole process, its logins included. Logins use md5
# unless AUTH says otherwise (AUTH=scram-sha-256): under SCRAM, PgBouncer
# derives the keys on every login (some 65 million instructions each) and
# pgbench's two threads derive theirs at once, which lands in both
# figures (BENCHMARKS, session 17). OWN_GROUPS=1 gives each proxy and
# pgbench a session, and so a scheduling group, of its own, as a
# deployment gives a proxy its own container. PIN="PROXY PGBENCH POSTGRES"
# fixes where each runs (CPU lists for taskset, "-" leaves one free:
# PIN="0 0 1" puts both proxies and pgbench on CPU 0 and every PostgreSQL
# process on CPU 1), so that rounds compare the proxies on one placement
# instead of each drawing its own. Needs nstat (iproute2).
# Traffic stays on loopback.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CLIENTS=${CLIENTS:-10}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-4}
read -r -a PGBENCH_ARGS <<<"${ARGS:--S -M extended}"
AUTH=${AUTH:-md5}

start_leader 10
start_pgsplit "$AUTH"
NAMES=(pgsplit) PORTS=("$SPLIT_PORT") PROXY_PIDS=("$SPLIT_PID")
if [ -n "${B:-}${B_ENV:-}" ]; then
    PGSPLIT_BIN=${B:-} PGSPLIT_ENV=${B_ENV:-} start_pgsplit "$AUTH" b
    NAMES+=(pgsplit-b) PORTS+=("$SPLIT_PORT") PROXY_PIDS+=("$SPLIT_PID")
fi
start_pgbouncer "$AUTH"
NAMES+=(PgBouncer) PORTS+=("$BOUNCER_PORT") PROXY_PIDS+=("$BOUNCER_PID")
sleep 1
HZ=$(getconf CLK_TCK)
read -r PIN_PROXY PIN_PGBENCH PIN_POSTGRES <<<"${PIN:-- - -}"
if [ "$PIN_PROXY" != - ]; then
    for p in "${PROXY_PIDS[@]}"; do taskset -a -p -c "$PIN_PROXY" "$p" >/dev/null; done
fi
if [ "$PIN_POSTGRES" != - ]; then
    # The postmaster too, so that backends forked later inherit the CPUs.
    for p in $(pgrep -u postgres postgres); do taskset -p -c "$PIN_POSTGRES" "$p" >/dev/null; done
fi
PIN_PGB=()
[ "$PIN_PGBENCH" != - ] && PIN_PGB=(taskset -c "$PIN_PGBENCH")

# "busy idle" jiffies of the whole machine.
machine() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat; }
# "pid ticks" for every PostgreSQL process.
backends() { for p in $(pgrep -u postgres postgres); do echo "$p $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)"; done | sort; }
# "voluntary involuntary" context switches of the given processes' threads.
switches() { for p in "$@"; do cat "/proc/$p"/task/*/status 2>/dev/null || true; done | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v + 0, n + 0}'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Moves from one CPU to the other of the given processes' threads
# (/proc/PID/sched; 0 where the kernel does not show it).
migrations() { for p in "$@"; do cat "/proc/$p"/task/*/sched 2>/dev/null || true; done | awk '$1 == "se.nr_migrations" {s += $3} END {print s + 0}'; }
# Nanoseconds the process's threads spent runnable but waiting for a CPU.
run_delay() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{s += $2} END {printf "%.0f\n", s}'; }

run() { # NAME PORT PROXY_PID
    local pgb=(${OWN_GROUPS:+setsid} "${PIN_PGB[@]}" pgbench -n -c "$CLIENTS" -j 2 "${PGBENCH_ARGS[@]}" -h 127.0.0.1 -p "$2" -U app app)
    PGPASSWORD=app-secret "${pgb[@]}" -T 1 >/dev/null 2>&1
    local pg_pids m0 b0 p0 s0 x0 r0 g0 h0 out m1 b1 p1 s1 x1 r1 g1 h1 tcp
    pg_pids=$(pgrep -u postgres postgres | tr '\n' ' ')
    nstat -n >/dev/null
    m0=$(machine) b0=$(backends) p0=$(ticks "$3") s0=$(switches $pg_pids) x0=$(switches "$3") r0=$(run_delay "$3") g0=$(migrations "$3") h0=$(migrations $pg_pids)
    # Where pgbench and PostgreSQL ran relative to the proxy, sampled
    # inside the measured run.
    python3 "$(dirname "$0")/placement.py" "$3" "$(awk -v s="$SECS" 'BEGIN {print s * 0.75}')" >"$WORK/placement" &
    local sampler=$!
    if ! out=$({ /usr/bin/time -f "TIME %U %S %w %c" env PGPASSWORD=app-secret "${pgb[@]}" -T "$SECS"; } 2>&1); then
        echo "$1: pgbench failed: $(grep -v '^TIME' <<<"$out" | tail -3 | tr '\n' ' ')"
        return 0
    fi
    wait "$sampler" || true
    m1=$(machine) b1=$(backends) p1=$(ticks "$3") s1=$(switches $pg_pids) x1=$(switches "$3") r1=$(run_delay "$3") g1=$(migrations "$3") h1=$(migrations $pg_pids)
    tcp=$(nstat 2>/dev/null | awk '$1 == "TcpOutSegs" {print $2}')
    local txns tps pgbench_cpu pgbench_switches worked pg_ticks
    txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    pgbench_cpu=$(awk '/^TIME/ {print $2 + $3}' <<<"$out")
    pgbench_switches=$(awk '/^TIME/ {print $4, $5}' <<<"$out")
    read -r worked pg_ticks < <(join <(echo "$b0") <(echo "$b1") | awk '{d = $3 - $2; s += d; if (d > 5) n++} END {print n + 0, s + 0}')
    awk -v name="$1" -v tps="$tps" -v n="$txns" -v m0="$m0" -v m1="$m1" -v hz="$HZ" \
        -v proxy=$(($p1 - $p0)) -v pg="$pg_ticks" -v pgb="$pgbench_cpu" -v s0="$s0" -v s1="$s1" -v x0="$x0" -v x1="$x1" \
        -v w="$pgbench_switches" -v tcp="${tcp:-0}" -v worked="$worked" -v delay=$((r1 - r0)) \
        -v placement="$(cat "$WORK/placement")" -v moved=$((g1 - g0)) -v pg_moved=$((h1 - h0)) 'BEGIN {
        split(m0, a, " "); split(m1, b, " "); split(s0, c, " "); split(s1, d, " "); split(x0, e, " "); split(x1, f, " "); split(w, g, " ")
        busy = b[1] - a[1]; idle = b[2] - a[2]
        printf "%-10s tps %7.0f  idle %4.1f%%  us/txn: proxy %5.1f  postgres %5.1f  pgbench %5.1f  proxy waiting for a CPU %5.1f  | sleeps/preempted per txn: postgres %.2f/%.2f proxy %.2f/%.2f pgbench %.2f/%.2f  tcp segments %.2f /txn  backends working %d  | migrations per txn: proxy %.3f postgres %.3f  | %s\n",
            name, tps, 100 * idle / (busy + idle), proxy / hz * 1e6 / n, pg / hz * 1e6 / n, pgb * 1e6 / n, delay / 1e3 / n,
            (d[1] - c[1]) / n, (d[2] - c[2]) / n, (f[1] - e[1]) / n, (f[2] - e[2]) / n, g[1] / n, g[2] / n, tcp / n, worked,
            moved / n, pg_moved / n, placement
    }'
}

echo "clients=$CLIENTS args=${PGBENCH_ARGS[*]} rounds=$ROUNDS seconds=$SECS pin=${PIN:-none}"
# The order flips every round (first to last, then last to first), so
# that no target always runs first after the previous round's last.
ORDER=("${!NAMES[@]}")
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 0 ]; then
        order=$(printf '%s\n' "${ORDER[@]}" | tac)
    else
        order=${ORDER[*]}
    fi
    for i in $order; do
        run "${NAMES[$i]}" "${PORTS[$i]}" "${PROXY_PIDS[$i]}"
    done
done
