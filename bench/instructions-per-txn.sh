#!/usr/bin/env bash
# Instructions pgsplit executes per transaction, counted by callgrind: a
# figure that does not move with machine noise, for comparing builds of
# the hot path. pgsplit runs under valgrind (slowly); counting starts
# after a warm-up and covers CLIENTS x TRANSACTIONS pgbench transactions.
#
#   bench/instructions-per-txn.sh [CLIENTS] [TRANSACTIONS_PER_CLIENT] [pgbench args...]
#   bench/instructions-per-txn.sh 1 10000 -S -M prepared
#
# Defaults: 10 clients, 2,000 transactions each, select-only (-S). Keeps
# the callgrind file for callgrind_annotate (its path is printed);
# PGSPLIT_BIN picks the binary, AUTH the client auth (md5; SCRAM by
# default). PROXY=pgbouncer counts PgBouncer instead, in front of the same
# kind of leader with the same pool size, for the figure to hold pgsplit's
# against; give it AUTH=md5, since PgBouncer derives SCRAM keys on every
# login (some 65 million instructions each, which swamp the count).
# Installs valgrind when missing.
# CACHE=1 also simulates the caches: first-level instruction and data
# misses per transaction, and the code executed on every transaction
# (64-byte lines run at least once per transaction on average), the
# footprint to hold against the first-level instruction cache (32 KiB on
# most x86 cores; callgrind reports the host's), and the locked
# (atomic read-modify-write) instructions run per transaction, each of
# which costs some 20 cycles even uncontended.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
CLIENTS=${1:-10}
TXNS=${2:-2000}
shift 2 || shift $#
EXTRA=("$@")
[ ${#EXTRA[@]} -eq 0 ] && EXTRA=(-S)
if ! command -v valgrind >/dev/null; then
    echo "installing valgrind ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind >/dev/null
fi

start_leader 10
OUT=$(mktemp /tmp/pgsplit-callgrind.XXXXXX)
if [ -n "${CACHE:-}" ]; then CALLGRIND_ARGS="${CALLGRIND_ARGS:-} --cache-sim=yes --dump-instr=yes"; fi
# wrap BINARY: a script that runs BINARY under callgrind.
wrap() {
    cat > "$WORK/under-callgrind" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind ${CALLGRIND_ARGS:-} --callgrind-out-file=$OUT $1 "\$@"
WRAP
    chmod +x "$WORK/under-callgrind"
}
if [ "${PROXY:-pgsplit}" = pgbouncer ]; then
    need_pgbouncer
    BIN=$PGBOUNCER
    wrap "$BIN"
    # PgBouncer runs as the postgres OS user when we are root: let it write
    # the callgrind file.
    [ "$(id -u)" = 0 ] && chown postgres: "$OUT"
    need_pgbouncer() { PGBOUNCER=$WORK/under-callgrind; }
    start_pgbouncer "${AUTH:-scram-sha-256}"
    PROXY_PORT=$BOUNCER_PORT PROXY_PID=$BOUNCER_PID
    # vgdb reaches a process blocked in a system call through ptrace, as
    # its own user.
    control() { as_pg callgrind_control "$@"; }
else
    BIN=${PGSPLIT_BIN:-$ROOT/target/release/pgsplit}
    wrap "$BIN"
    PGSPLIT_BIN=$WORK/under-callgrind start_pgsplit "${AUTH:-scram-sha-256}"
    PROXY_PORT=$SPLIT_PORT PROXY_PID=$SPLIT_PID
    control() { callgrind_control "$@"; }
fi
pgbench_run() { PGPASSWORD=app-secret pgbench -n -c "$CLIENTS" -j 2 -t "$1" "${EXTRA[@]}" -h 127.0.0.1 -p "$PROXY_PORT" -U app app; }
for _ in $(seq 60); do pgbench_run 1 >/dev/null 2>&1 && break; sleep 1; done
# Long enough for the pool to reach its size: a server login (SCRAM key
# derivation) inside the counted window would swamp it.
pgbench_run 300 >/dev/null
# A dump starts the counted window: each dump holds what ran since the
# last (zeroing through vgdb did not take with PgBouncer).
control -d "$PROXY_PID" >/dev/null
pgbench_run "$TXNS" | grep -E '^(tps|number of transactions actually processed)'
control -d "$PROXY_PID" >/dev/null
sleep 1
FILE=$(ls -v "$OUT".* | tail -1)
TOTAL=$(callgrind_annotate "$FILE" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "callgrind file: $FILE"
echo "instructions per transaction: $((TOTAL / (CLIENTS * TXNS)))"
if [ -n "${CACHE:-}" ]; then
    # Addresses of the binary's locked (atomic read-modify-write) instructions.
    BIN=$(readlink -f "$BIN")
    objdump -d --no-show-raw-insn "$BIN" \
        | awk '/\tlock |\txchg .*\(/ {sub(":", "", $1); print $1}' >"$WORK/locked"
    python3 - "$FILE" $((CLIENTS * TXNS)) "$WORK/locked" "$BIN" <<'PY'
import collections, re, sys
path, txns, locked_file, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
locked = {int(a, 16) for a in open(locked_file) if a.strip()}
events, totals, per_addr, last, skip = [], None, collections.Counter(), 0, False
objects, obj, own = {}, None, collections.Counter()
for line in open(path):
    if line.startswith(("ob=", "cob=")):
        m = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.strip())
        if m and m.group(2):
            objects[m.group(1)] = m.group(2)
        if line.startswith("ob=") and m:
            obj = objects.get(m.group(1), "")
    elif line.startswith("events:"):
        events = line.split()[1:]
        totals = [0] * len(events)
    elif line.startswith("calls="):
        skip = True  # the next cost line is the call's inclusive cost
    elif line[0] in "0123456789+-*":
        parts = line.split()
        p = parts[0]
        if p == "*":
            addr = last
        elif p[0] in "+-":
            step = int(p[1:], 0)
            addr = last + step if p[0] == "+" else last - step
        else:
            addr = int(p, 0)
        last = addr
        if skip:
            skip = False
            continue
        costs = [int(c) for c in parts[2:]]  # positions: instr line
        for i, c in enumerate(costs):
            totals[i] += c
        if costs:
            per_addr[addr] += costs[0]
            if obj == binary and addr in locked:
                own[addr] += costs[0]
lines = collections.Counter()
for addr, n in per_addr.items():
    lines[addr // 64] += n
hot = sum(1 for n in lines.values() if n >= txns)
get = lambda name: totals[events.index(name)] / txns
print(f"I1 misses per transaction: {get('I1mr'):.0f}; D1 misses: {get('D1mr') + get('D1mw'):.0f}")
print(f"code run on every transaction: {hot} lines of 64 bytes ({hot * 64 / 1024:.1f} KiB)")
print(f"locked (atomic) instructions of pgsplit's own code per transaction: {sum(own.values()) / txns:.1f}")
PY
fi
