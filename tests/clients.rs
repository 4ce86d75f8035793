//! Real client programs through pgsplit: psql and pgbench (simple and
//! extended protocol, and a new connection per transaction), with results
//! compared against the server's own.

mod support;

use support::TestEnv;

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_gives_the_same_output_as_the_server() {
    let env = TestEnv::start(0, "pool_size = 2").await;
    let script = "\
CREATE TABLE psql_t AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 500) g;
SELECT count(*), min(h), max(h) FROM psql_t;
SELECT id, h FROM psql_t WHERE id % 97 = 0 ORDER BY id;
\\d psql_t
SELECT 1/0;
SELECT 'after error';
BEGIN; UPDATE psql_t SET h = 'x' WHERE id = 1; ROLLBACK;
SELECT h FROM psql_t WHERE id = 1;
DROP TABLE psql_t;
";
    let path = std::env::temp_dir().join(format!("pgsplit-psql-{}.sql", std::process::id()));
    std::fs::write(&path, script).unwrap();
    let file = path.to_string_lossy().into_owned();
    let run = |url: &str| env.client_command("psql", &[url, "-X", "-A", "-f", &file]);
    let through = run(&env.url());
    let direct = run(&env.leader_url());
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&through.stdout),
        String::from_utf8_lossy(&direct.stdout)
    );
    let errors = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .map(|l| {
                l.split_once("ERROR")
                    .map(|(_, e)| e.to_string())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(errors(&through), errors(&direct));
    assert!(String::from_utf8_lossy(&through.stdout).contains("after error"));
}

/// Runs pgbench through pgsplit and checks it reports every transaction
/// done and none failed.
fn pgbench(env: &TestEnv, args: &[&str], expected: u32) {
    let mut all = vec![env.url()];
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let out = stdout(&env.client_command("pgbench", &all));
    assert!(
        out.contains(&format!(
            "number of transactions actually processed: {expected}/{expected}"
        )),
        "{out}"
    );
    assert!(!out.contains("number of failed transactions: 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_extended_and_reconnecting() {
    let env = TestEnv::start(0, "pool_size = 3").await;
    // Initialisation through pgsplit too: COPY, VACUUM, DDL.
    let init = env.url();
    stdout(&env.client_command("pgbench", &["-i", "-s", "1", "-q", &init]));
    pgbench(
        &env,
        &["-n", "-c", "6", "-j", "2", "-t", "50", "-M", "simple"],
        300,
    );
    pgbench(
        &env,
        &["-n", "-c", "6", "-j", "2", "-t", "50", "-M", "extended"],
        300,
    );
    pgbench(&env, &["-n", "-c", "4", "-j", "2", "-t", "15", "-C"], 60);
    pgbench(
        &env,
        &[
            "-n", "-S", "-c", "6", "-j", "2", "-t", "100", "-M", "extended",
        ],
        600,
    );
    // TPC-B keeps balances and history consistent; check on the server.
    let history = env.leader_sql("SELECT count(*) FROM pgbench_history");
    assert_eq!(history, "660");
    let consistent = env.leader_sql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    assert_eq!(consistent, "t");
    assert!(env.app_backends() <= 3);
}
