# Shared setup for the benchmark scripts: a fresh PostgreSQL leader, pgsplit
# and PgBouncer in front of it (transaction pooling, same pool size), and
# cleanup of everything on exit. Source it; it defines the functions below.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POOL_SIZE=${POOL_SIZE:-20}
PIDS=()

need_pgbouncer() {
    if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
        echo "installing pgbouncer ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer >/dev/null
    fi
    PGBOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
}

# Runs a command as the postgres OS user when we are root. setpriv, unlike
# runuser, keeps the raised open-files limit (no PAM session).
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
    [ -n "${WORK:-}" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

# start_leader SCALE: initdb, start, create role app and pgbench tables.
start_leader() {
    PGBIN=$(dirname "$(readlink -f "$(command -v postgres 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/postgres | sort -V | tail -1)")")
    [ -n "${NO_BUILD:-}" ] || (cd "$ROOT" && cargo build --release -q)
    WORK=$(mktemp -d /tmp/pgsplit-bench.XXXXXX)
    chmod 755 "$WORK"
    [ "$(id -u)" = 0 ] && chown postgres: "$WORK"
    trap cleanup EXIT
    PG_PORT=$(free_port)
    as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -N -E UTF8 --locale=C >/dev/null
    cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
CONF
    printf 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n' > "$WORK/data/pg_hba.conf"
    as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
    psql -X -q -h "$WORK" -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE ROLE app LOGIN PASSWORD 'app-secret'" -c "CREATE DATABASE app OWNER app"
    PGPASSWORD=app-secret pgbench -q -i -s "${1:-10}" -h 127.0.0.1 -p "$PG_PORT" -U app app 2>/dev/null
}

# start_pgsplit AUTH (scram-sha-256 | md5) [NAME]: sets SPLIT_PORT and
# SPLIT_PID. NAME (default AUTH) tells the config and log files of several
# instances apart; PGSPLIT_BIN picks the binary.
# With OWN_GROUPS set, pgsplit and PgBouncer each start in a session of
# their own (setsid), so the kernel schedules each as a group apart from
# the shell's, where pgbench runs: PostgreSQL's backends each have one.
start_pgsplit() {
    local name=${2:-$1}
    SPLIT_PORT=$(free_port)
    cat > "$WORK/pgsplit-$name.toml" <<CONF
[proxy]
listen = "127.0.0.1:$SPLIT_PORT"
admin_listen = "127.0.0.1:0"
pool_mode = "transaction"
pool_size = $POOL_SIZE
max_client_connections = 20000
auth_type = "$1"
[[users]]
name = "app"
password = "app-secret"
[[clusters]]
name = "bench"
[clusters.discovery]
kind = "static"
leader = "127.0.0.1:$PG_PORT"
CONF
    RUST_LOG=warn ${OWN_GROUPS:+setsid} ${PGSPLIT_ENV:-} "${PGSPLIT_BIN:-$ROOT/target/release/pgsplit}" --config "$WORK/pgsplit-$name.toml" >"$WORK/pgsplit-$name.log" 2>&1 &
    SPLIT_PID=$!
    PIDS+=("$SPLIT_PID")
}

# start_pgbouncer AUTH (scram-sha-256 | md5): sets BOUNCER_PORT and BOUNCER_PID.
start_pgbouncer() {
    need_pgbouncer
    BOUNCER_PORT=$(free_port)
    echo '"app" "app-secret"' > "$WORK/userlist.txt"
    cat > "$WORK/pgbouncer-$1.ini" <<CONF
[databases]
app = host=127.0.0.1 port=$PG_PORT dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = $1
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 20000
listen_backlog = 4096
logfile = $WORK/pgbouncer-$1.log
pidfile = $WORK/pgbouncer-$1.pid
CONF
    [ "$(id -u)" = 0 ] && chown postgres: "$WORK"/pgbouncer-"$1".ini "$WORK"/userlist.txt
    as_pg ${OWN_GROUPS:+setsid} "$PGBOUNCER" "$WORK/pgbouncer-$1.ini" >/dev/null 2>&1 &
    PIDS+=("$!")
    sleep 1
    # Its pid file says it is up (later under valgrind).
    for _ in $(seq 60); do [ -s "$WORK/pgbouncer-$1.pid" ] && break; sleep 1; done
    BOUNCER_PID=$(cat "$WORK/pgbouncer-$1.pid")
    PIDS+=("$BOUNCER_PID")
}
