#!/usr/bin/env bash
# Regenerates pgo/pgsplit.profdata, the profile that optimised builds use
# (scripts/rustc-pgo): builds pgsplit with instrumentation, runs pgbench
# through it in front of a throw-away leader (select-only simple, extended
# and prepared, TPC-B-like, logins with md5 and SCRAM; 10, 50 and 200
# clients), stops it so that it writes its counts, and merges them.
#
#   scripts/pgo-profile.sh        # then commit pgo/pgsplit.profdata
#
# Run it after changes to the hot path: a function whose code changed
# since the profile was taken is optimised without it (the build stays
# correct, only slower). Needs llvm-profdata from LLVM 19 or newer (the
# Debian package llvm-19, installed when missing). Traffic stays on
# loopback; about three minutes after the instrumented build, and the
# next release build starts from scratch.
set -euo pipefail
. "$(dirname "$0")/../bench/lib.sh"

# An older llvm-profdata (Debian's default is 14) cannot read what rustc's
# LLVM writes.
profdata=
for version in 22 21 20 19; do
    profdata=$(command -v "llvm-profdata-$version" || true)
    [ -n "$profdata" ] && break
done
if [ -z "$profdata" ]; then
    echo "installing llvm-19 (llvm-profdata) ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends llvm-19 >/dev/null
    profdata=$(command -v llvm-profdata-19)
fi

INSTRUMENTED="$ROOT/target/pgo-instrumented"
echo "building an instrumented pgsplit ..." >&2
# A fixed directory in RUSTFLAGS keeps the instrumented build incremental;
# LLVM_PROFILE_FILE sends this run's counts elsewhere.
(cd "$ROOT" && RUSTFLAGS="-Cprofile-generate=$INSTRUMENTED/profiles" CARGO_TARGET_DIR="$INSTRUMENTED" cargo build --release -q)

NO_BUILD=1 start_leader 10
# Inside the bench's work directory, which goes when the script exits.
DATA="$WORK/profiles"
mkdir "$DATA"
export PGSPLIT_ENV="env LLVM_PROFILE_FILE=$DATA/%m_%p.profraw"
PGSPLIT_BIN="$INSTRUMENTED/release/pgsplit" start_pgsplit md5
MD5_PORT=$SPLIT_PORT MD5_PID=$SPLIT_PID
PGSPLIT_BIN="$INSTRUMENTED/release/pgsplit" start_pgsplit scram-sha-256
SCRAM_PORT=$SPLIT_PORT SCRAM_PID=$SPLIT_PID
sleep 1

# pgbench PORT ARGS...: a bounded run through one instance.
bench() {
    local port=$1
    shift
    echo "pgbench $*" >&2
    PGPASSWORD=app-secret pgbench -n -j 2 -h 127.0.0.1 -p "$port" -U app "$@" app >/dev/null
}
for clients in 10 50 200; do
    for mode in simple extended prepared; do
        bench "$SCRAM_PORT" -c "$clients" -T 4 -S -M "$mode"
    done
    bench "$SCRAM_PORT" -c "$clients" -T 4 -M simple
done
bench "$MD5_PORT" -c 10 -T 3 -C -S -M simple
bench "$SCRAM_PORT" -c 10 -T 3 -C -S -M simple

# A clean shutdown writes the counts.
for pid in "$MD5_PID" "$SCRAM_PID"; do
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
done
"$profdata" merge --sparse -o "$ROOT/pgo/pgsplit.profdata" "$DATA"/*.profraw
# Cargo does not see what the wrapper adds, so it would keep every crate
# it compiled with the old profile: the next release build starts afresh.
(cd "$ROOT" && cargo clean --release -q)
echo "wrote pgo/pgsplit.profdata ($(wc -c <"$ROOT/pgo/pgsplit.profdata") bytes); commit it" >&2
