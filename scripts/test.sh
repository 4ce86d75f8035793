#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need
# (PostgreSQL 15 server and client programs) when missing, then runs every
# unit and integration test with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql-15)
command -v psql >/dev/null || need_apt+=(postgresql-client-15)
command -v pgbench >/dev/null || need_apt+=(postgresql-client-15)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null \
        || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-targets --no-fail-fast "$@"
else
    cargo test --all-targets --no-fail-fast "$@"
fi
