#!/usr/bin/env bash
# Memory per idle client: opens N authenticated client connections (SCRAM)
# to pgsplit and to PgBouncer in front of the same leader, holds them idle,
# and reports the growth of each process's RSS divided by N.
#
#   bench/idle-memory.sh          # N=10000
#   N=2000 bench/idle-memory.sh
#
# Uses asyncpg from target/driver-venv (made when missing).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
N=${N:-10000}
ulimit -n "$(ulimit -Hn)"

VENV="$ROOT/target/driver-venv"
if ! "$VENV/bin/python" -c 'import asyncpg' >/dev/null 2>&1; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/drivers/requirements.txt"
fi

start_leader 1
start_pgsplit scram-sha-256
start_pgbouncer scram-sha-256
sleep 1

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

measure() { # name port pid
    local before after
    # Warm up: one login and query so the pool and caches exist.
    PGPASSWORD=app-secret psql -X -q -h 127.0.0.1 -p "$2" -U app -d app -c 'SELECT 1' >/dev/null
    before=$(rss_kib "$3")
    "$VENV/bin/python" - "$2" "$N" "$3" <<'PY' > "$WORK/after-$1"
import asyncio, sys, asyncpg
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
async def main():
    conns = []
    for start in range(0, n, 100):
        batch = await asyncio.gather(*(asyncpg.connect(host="127.0.0.1", port=port, user="app", password="app-secret",
                                                       database="app", statement_cache_size=0, ssl=False, timeout=600)
                                       for _ in range(start, min(n, start + 100))))
        conns.extend(batch)
    await asyncio.sleep(2)
    rss = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0]
    print(rss)
    await asyncio.gather(*(c.close() for c in conns))
asyncio.run(main())
PY
    after=$(cat "$WORK/after-$1")
    python3 -c "import sys; b,a,n=map(int,sys.argv[1:]); print(f'| $1 | {n} | {b} | {a} | {(a-b)*1024/n:.0f} |')" "$before" "$after" "$N"
}

printf '\n| pooler | idle clients | RSS before KiB | RSS after KiB | bytes per idle client |\n|---|---:|---:|---:|---:|\n'
measure pgsplit "$SPLIT_PORT" "$SPLIT_PID"
[ "${ONLY:-}" = pgsplit ] || measure PgBouncer "$BOUNCER_PORT" "$BOUNCER_PID"
