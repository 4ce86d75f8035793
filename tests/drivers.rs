//! Real drivers in other languages through a transaction-mode pool smaller
//! than the number of clients: asyncpg (default statement cache), psycopg 3
//! (prepare_threshold=0 and pipeline mode) and node-postgres (named
//! queries). `scripts/test.sh` installs them: Python packages into
//! `target/driver-venv`, npm packages into `tests/drivers/node`.

mod support;

use std::path::PathBuf;
use std::process::Command;
use support::TestEnv;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let venv = root().join("target/driver-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test.sh, which installs the driver test dependencies",
        venv.display()
    );
    venv
}

/// Runs a driver script against pgsplit and checks it reports success.
fn run(env: &TestEnv, program: &PathBuf, script: &str, expect: &str) {
    let out = Command::new(program)
        .arg(root().join(script))
        .env("DATABASE_URL", env.url())
        .env("CLIENTS", "8")
        .current_dir(root())
        .output()
        .expect("run the driver script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(expect), "{script}: {stdout}");
    assert!(
        env.app_backends() <= 3,
        "pool_size servers only (plus none leaked)"
    );
}

const POOL: &str = "pool_size = 3\nquery_wait_timeout = \"60s\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_with_its_statement_cache() {
    let env = TestEnv::start(0, POOL).await;
    run(
        &env,
        &python(),
        "tests/drivers/asyncpg_check.py",
        "ok asyncpg 240",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_and_pipelined() {
    let env = TestEnv::start(0, POOL).await;
    run(
        &env,
        &python(),
        "tests/drivers/psycopg_check.py",
        "ok psycopg 248",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries() {
    let env = TestEnv::start(0, POOL).await;
    let modules = root().join("tests/drivers/node/node_modules/pg");
    assert!(
        modules.exists(),
        "node-postgres is missing: run scripts/test.sh"
    );
    run(
        &env,
        &PathBuf::from("node"),
        "tests/drivers/node/check.js",
        "ok node-postgres 240",
    );
}
