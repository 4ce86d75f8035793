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
# PGSPLIT_BIN picks the binary. Installs valgrind when missing.
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
cat > "$WORK/under-callgrind" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind ${CALLGRIND_ARGS:-} --callgrind-out-file=$OUT ${PGSPLIT_BIN:-$ROOT/target/release/pgsplit} "\$@"
WRAP
chmod +x "$WORK/under-callgrind"
PGSPLIT_BIN=$WORK/under-callgrind start_pgsplit scram-sha-256
pgbench_run() { PGPASSWORD=app-secret pgbench -n -c "$CLIENTS" -j 2 -t "$1" "${EXTRA[@]}" -h 127.0.0.1 -p "$SPLIT_PORT" -U app app; }
for _ in $(seq 60); do pgbench_run 1 >/dev/null 2>&1 && break; sleep 1; done
pgbench_run 50 >/dev/null
callgrind_control -z "$SPLIT_PID" >/dev/null
pgbench_run "$TXNS" | grep -E '^(tps|number of transactions actually processed)'
callgrind_control -d "$SPLIT_PID" >/dev/null
sleep 1
FILE=$(ls -t "$OUT"* | grep -v "^$OUT\$" | head -1)
TOTAL=$(callgrind_annotate "$FILE" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "callgrind file: $FILE"
echo "instructions per transaction: $((TOTAL / (CLIENTS * TXNS)))"
