#!/usr/bin/env bash
# pgbench through pgsplit and through PgBouncer against the same leader, in
# one run: select-only (-S) and the TPC-B-like default script, at 1, 10 and
# 50 clients, both poolers in transaction mode with the same pool size.
# Prints TPS, average latency and the pgsplit/PgBouncer ratios.
#
#   bench/pgbench-compare.sh            # 10 s per run
#   DURATION=30 CLIENTS="1 10 50 100" bench/pgbench-compare.sh
#
# Installs Debian's pgbouncer when missing. Traffic stays on loopback.
set -euo pipefail

DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 10 50"}
POOL_SIZE=${POOL_SIZE:-20}
SCALE=${SCALE:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    echo "installing pgbouncer ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
fi
PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
PGBIN=$(dirname "$(readlink -f "$(command -v postgres 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)")")

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

(cd "$ROOT" && cargo build --release -q)

WORK=$(mktemp -d /tmp/pgsplit-bench.XXXXXX)
chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PG_PORT=$(free_port); SPLIT_PORT=$(free_port); BOUNCER_PORT=$(free_port)
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -N -E UTF8 --locale=C >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 200
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
printf 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n' > "$WORK/data/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
psql -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d postgres -c "CREATE ROLE app LOGIN PASSWORD 'app-secret'" -c "CREATE DATABASE app OWNER app"
PGPASSWORD=app-secret pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U app app 2>/dev/null

cat > "$WORK/pgsplit.toml" <<CONF
[proxy]
listen = "127.0.0.1:$SPLIT_PORT"
admin_listen = "127.0.0.1:0"
pool_mode = "transaction"
pool_size = $POOL_SIZE
[[users]]
name = "app"
password = "app-secret"
[[clusters]]
name = "bench"
[clusters.discovery]
kind = "static"
leader = "127.0.0.1:$PG_PORT"
CONF
RUST_LOG=warn "$ROOT/target/release/pgsplit" --config "$WORK/pgsplit.toml" >"$WORK/pgsplit.log" 2>&1 &
PIDS+=($!)

echo '"app" "app-secret"' > "$WORK/userlist.txt"
cat > "$WORK/pgbouncer.ini" <<CONF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 1000
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
CONF
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"/pgbouncer.ini "$WORK"/userlist.txt
as_pg "$PGBOUNCER" "$WORK/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)
sleep 1

# tps and average latency of one pgbench run.
run() { # port clients workload-flags
    local out
    out=$(PGPASSWORD=app-secret pgbench -n -h 127.0.0.1 -p "$1" -U app -c "$2" -j 2 -T "$DURATION" $3 app 2>&1) || { echo "$out" >&2; exit 1; }
    local tps lat
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
    echo "$tps $lat"
}

printf '\npgbench %ss per run, scale %s, pool_size %s, transaction pooling, PostgreSQL %s\n\n' "$DURATION" "$SCALE" "$POOL_SIZE" "$("$PGBIN/postgres" --version | awk '{print $3}')"
printf '| workload | clients | pgsplit TPS | pgsplit lat ms | PgBouncer TPS | PgBouncer lat ms | TPS ratio | latency ratio |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
for workload in "select-only:-S" "tpcb-like:"; do
    name=${workload%%:*}; flags=${workload#*:}
    for c in $CLIENTS; do
        read -r s_tps s_lat <<<"$(run "$SPLIT_PORT" "$c" "$flags")"
        read -r b_tps b_lat <<<"$(run "$BOUNCER_PORT" "$c" "$flags")"
        ratio=$(python3 -c "print(f'{$s_tps/$b_tps:.2f}')")
        lratio=$(python3 -c "print(f'{$s_lat/$b_lat:.2f}')")
        printf '| %s | %s | %.0f | %.3f | %.0f | %.3f | %s | %s |\n' "$name" "$c" "$s_tps" "$s_lat" "$b_tps" "$b_lat" "$ratio" "$lratio"
    done
done
