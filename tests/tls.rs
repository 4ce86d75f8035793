//! TLS on both sides, with certificates made at test time: clients with
//! sslmode=require and verify-full, refusing plaintext clients, and every
//! server-side mode against a leader with ssl = on.

mod support;

use std::process::Command;
use support::certs::TestCa;
use support::TestEnv;

/// psql through pgsplit with extra connection settings; (ok, stdout, stderr).
fn psql(env: &TestEnv, conninfo: &str, sql: &str) -> (bool, String, String) {
    let conn = format!(
        "host=localhost port={} user=app dbname=app {conninfo}",
        env.addr.port()
    );
    let out = Command::new("psql")
        .args([&conn, "-X", "-Atc", sql])
        .env("PGPASSWORD", "app-secret")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn client_tls(cert: &support::certs::ServerCert, extra: &str) -> String {
    format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n{extra}",
        cert.cert_file.display(),
        cert.key_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_require_and_verify_full() {
    let ca = TestCa::new("clients");
    let cert = ca.server_cert("pgsplit", &["localhost", "127.0.0.1"]);
    let env = TestEnv::start(0, &client_tls(&cert, "")).await;
    let ca_file = ca.ca_file().display().to_string();
    let (ok, out, err) = psql(
        &env,
        &format!("sslmode=verify-full sslrootcert={ca_file}"),
        "SELECT 'secure'",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "secure");
    let (ok, out, err) = psql(&env, "sslmode=require", "SELECT 1");
    assert!(ok && out == "1", "{err}");
    // Plaintext still allowed unless tls_require.
    let (ok, _, err) = psql(&env, "sslmode=disable", "SELECT 1");
    assert!(ok, "{err}");
    // A client trusting another CA refuses pgsplit's certificate.
    let other = TestCa::new("other");
    let (ok, _, err) = psql(
        &env,
        &format!(
            "sslmode=verify-full sslrootcert={}",
            other.ca_file().display()
        ),
        "SELECT 1",
    );
    assert!(!ok);
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_refused_when_tls_is_required() {
    let ca = TestCa::new("require");
    let cert = ca.server_cert("pgsplit", &["localhost"]);
    let env = TestEnv::start(0, &client_tls(&cert, "tls_require = true")).await;
    let (ok, _, err) = psql(&env, "sslmode=disable", "SELECT 1");
    assert!(!ok);
    assert!(err.contains("TLS is required"), "{err}");
    let (ok, out, err) = psql(&env, "sslmode=require", "SELECT 2");
    assert!(ok && out == "2", "{err}");
    // SCRAM over TLS, then extended protocol and a pool: all on the TLS stream.
    let (ok, out, err) = psql(
        &env,
        "sslmode=require",
        "SELECT count(*) FROM generate_series(1, 100000)",
    );
    assert!(ok && out == "100000", "{err}");
}

const SERVER_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

async fn server_ssl_through(env: &TestEnv) -> Result<bool, String> {
    let client = support::connect(&env.url())
        .await
        .map_err(|e| format!("{e}: {:?}", e.as_db_error()))?;
    let row = client
        .query_one(SERVER_SSL, &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_modes() {
    let ca = TestCa::new("servers");
    let good = ca.server_cert("leader", &["127.0.0.1"]);
    let ca_file = ca.ca_file();
    let other = TestCa::new("servers-other");
    for (mode, ca, expect) in [
        ("disable", None, Ok(false)),
        ("prefer", None, Ok(true)),
        ("require", None, Ok(true)),
        ("verify-ca", Some(&ca_file), Ok(true)),
        ("verify-full", Some(&ca_file), Ok(true)),
        ("verify-full", Some(&other.ca_file()), Err(())),
    ] {
        let mut extra = format!("server_tls_mode = \"{mode}\"\n");
        if let Some(ca) = ca {
            extra.push_str(&format!("server_tls_ca_file = \"{}\"\n", ca.display()));
        }
        let env = TestEnv::start(0, &extra).await;
        env.cluster
            .enable_leader_tls(&good.cert_pem, &good.key_pem)
            .unwrap();
        let got = server_ssl_through(&env).await;
        match expect {
            Ok(ssl) => assert_eq!(got, Ok(ssl), "mode {mode}"),
            Err(()) => assert!(got.is_err(), "mode {mode} must refuse: {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_ignores_the_name_and_verify_full_does_not() {
    let ca = TestCa::new("names");
    // A certificate for another host name than the one pgsplit connects to.
    let misnamed = ca.server_cert("leader", &["db.example.internal"]);
    let ca_file = ca.ca_file().display().to_string();
    for (mode, ok) in [("verify-ca", true), ("verify-full", false)] {
        let extra = format!("server_tls_mode = \"{mode}\"\nserver_tls_ca_file = \"{ca_file}\"\n");
        let env = TestEnv::start(0, &extra).await;
        env.cluster
            .enable_leader_tls(&misnamed.cert_pem, &misnamed.key_pem)
            .unwrap();
        let got = server_ssl_through(&env).await;
        assert_eq!(got.is_ok(), ok, "mode {mode}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_server_without_tls() {
    let env = TestEnv::start(0, "server_tls_mode = \"require\"").await;
    let err = support::connect(&env.url())
        .await
        .expect_err("the leader has ssl = off");
    assert_eq!(support::sqlstate(&err).as_deref(), Some("08006"));
}
