#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need
# when missing (PostgreSQL 15 server and client programs; Patroni and etcd
# for the failover tests; Debian's prometheus-pgbouncer-exporter for the
# console test; kubectl and PyYAML for the deploy checks; the Python and Node.js drivers the driver tests
# use), then runs every unit and integration test with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
command -v pgbench >/dev/null || need_apt+=(postgresql-client-15)
command -v patroni >/dev/null || need_apt+=(patroni)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v prometheus-pgbouncer-exporter >/dev/null || need_apt+=(prometheus-pgbouncer-exporter)
command -v kubectl >/dev/null || need_apt+=(kubectl)
/usr/bin/python3 -c 'import yaml' 2>/dev/null || need_apt+=(python3-yaml)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi

# Driver tests: asyncpg and psycopg 3 in a venv, node-postgres via npm.
venv=target/driver-venv
if ! "$venv/bin/python" -c 'import asyncpg, psycopg' >/dev/null 2>&1; then
    echo "installing Python drivers into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/drivers/requirements.txt
fi
if [ ! -d tests/drivers/node/node_modules/pg ]; then
    echo "installing node-postgres" >&2
    (cd tests/drivers/node && npm ci --no-audit --no-fund --silent)
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast "$@"
else
    cargo test --all-targets --no-fail-fast "$@"
fi
