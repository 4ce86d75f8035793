#!/usr/bin/env bash
# Where the proxy's time goes on the scheduler, pgsplit against PgBouncer
# in front of the same leader: the kernel's sched_switch / sched_wakeup /
# sched_migrate_task tracepoints (perf) for one second in the middle of a
# pgbench run, replayed to tell how long the proxy ran, how long it sat
# runnable waiting for a CPU and behind whom (PostgreSQL, pgbench), and
# how long a CPU sat idle while a task waited on the other one (the
# kernel does not move a task that ran very recently). On these 2-core
# machines the proxy is the serial stage at 10 clients; what it waits
# for sets TPS as much as what it spends (BENCHMARKS, session 20).
#
#   bench/sched-waits.sh                 # 10 clients, select-only simple, 2 rounds
#   CLIENTS=50 ROUNDS=3 ARGS="-S -M extended" bench/sched-waits.sh
#
# Logins use md5 (AUTH=scram-sha-256 to change). Needs perf (Debian's
# linux-perf, installed when missing) and python3. Traffic stays on
# loopback.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CLIENTS=${CLIENTS:-10}
ROUNDS=${ROUNDS:-2}
read -r -a PGBENCH_ARGS <<<"${ARGS:--S -M simple}"
AUTH=${AUTH:-md5}
if ! command -v perf >/dev/null; then
    echo "installing linux-perf ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi

start_leader 10
start_pgsplit "$AUTH"
start_pgbouncer "$AUTH"
sleep 1

# replay DATA PROXY_TID: the summary of one recording.
replay() {
    perf script -i "$1" -F comm,tid,cpu,time,event,trace 2>/dev/null | python3 -c '
import collections, re, sys
proxy = int(sys.argv[1])
running = {}   # cpu -> tid on it (0: idle)
waiting = {}   # tid -> cpu whose queue it waits in
name = {}
idle = waited_idle = proxy_waited_idle = ran = waited = 0.0
behind = collections.Counter()
first = last = None
def who(tid):
    n = name.get(tid, "?")
    return "proxy" if tid == proxy else "postgres" if n.startswith("postgres") else "pgbench" if n.startswith("pgbench") else "other"
for line in sys.stdin:
    m = re.match(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)", line)
    if not m:
        continue
    cpu, t, event, fields = int(m.group(3)), float(m.group(4)), m.group(5), dict(re.findall(r"(\w+)=(\S+)", m.group(6)))
    first = t if first is None else first
    if last is not None and len(running) == 2:
        dt = t - last
        for c in (0, 1):
            if running[c] == 0:
                idle += dt
                waited_idle += dt if (1 - c) in waiting.values() else 0
                proxy_waited_idle += dt if waiting.get(proxy) == 1 - c else 0
        if proxy in waiting:
            waited += dt
            behind[who(running.get(waiting[proxy], 0))] += dt
        ran += dt if proxy in running.values() else 0
    last = t
    if event == "sched:sched_switch":
        prev, nxt = int(fields["prev_pid"]), int(fields["next_pid"])
        name[prev], name[nxt] = fields["prev_comm"], fields["next_comm"]
        if prev != 0 and fields["prev_state"].startswith("R"):
            waiting[prev] = cpu
        waiting.pop(nxt, None)
        running[cpu] = nxt
    elif event == "sched:sched_wakeup":
        tid = int(fields["pid"])
        name[tid] = fields["comm"]
        if tid not in running.values():
            waiting[tid] = int(fields["target_cpu"])
    elif event == "sched:sched_migrate_task" and int(fields["pid"]) in waiting:
        waiting[int(fields["pid"])] = int(fields["dest_cpu"])
span = (last - first) or 1
pct = lambda v: f"{100 * v / span:.1f}%"
postgres, pgbench = pct(behind["postgres"]), pct(behind["pgbench"])
print(f"proxy ran {pct(ran)}, waited for a CPU {pct(waited)} (behind PostgreSQL {postgres}, pgbench {pgbench}) | CPUs idle {pct(idle / 2)}, idle while a task waited on the other CPU {pct(waited_idle / 2)}, while the proxy did {pct(proxy_waited_idle / 2)}")
' "$2"
}

for round in $(seq "$ROUNDS"); do
    for target in "pgsplit $SPLIT_PORT $SPLIT_PID" "PgBouncer $BOUNCER_PORT $BOUNCER_PID"; do
        read -r name port pid <<<"$target"
        pgb=(pgbench -n -c "$CLIENTS" -j 2 "${PGBENCH_ARGS[@]}" -h 127.0.0.1 -p "$port" -U app app)
        PGPASSWORD=app-secret "${pgb[@]}" -T 1 >/dev/null 2>&1
        PGPASSWORD=app-secret "${pgb[@]}" -T 4 >"$WORK/pgbench.out" 2>&1 &
        bench=$!
        sleep 1.5
        perf record -q -o "$WORK/sched.data" -e sched:sched_switch -e sched:sched_wakeup \
            -e sched:sched_migrate_task -a -- sleep 1 >/dev/null 2>&1
        while kill -0 "$bench" 2>/dev/null; do sleep 0.2; done
        tps=$(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$WORK/pgbench.out")
        printf '%-10s round %s tps %6s  %s\n' "$name" "$round" "$tps" "$(replay "$WORK/sched.data" "$pid")"
    done
done
