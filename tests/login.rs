//! Client startup and authentication, and server authentication, through
//! pgsplit against a real leader.

mod support;

use pgsplit::demo::cluster::AUTH_USERS;
use support::raw::{self, field, Raw};
use support::{connect, sqlstate, TestEnv};

const REPORTED: &[&str] = &[
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "IntervalStyle",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "application_name",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameter_status_matches_the_server() {
    let env = TestEnv::start(0, "").await;
    let leader: std::net::SocketAddr = env.cluster.leader.addr().parse().unwrap();
    let (_, direct) = Raw::login(leader, "app", "app-secret", "app").await;
    let (_, proxied) = Raw::login(env.addr, "app", "app-secret", "app").await;
    for name in REPORTED {
        let d = direct.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let p = proxied.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        assert!(d.is_some(), "server reports {name}");
        assert_eq!(p, d, "pgsplit must report {name} as the server does");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_the_same_error() {
    let env = TestEnv::start(0, "").await;
    let wrong = connect(&env.url_for("app", "nope"))
        .await
        .expect_err("wrong password refused");
    let unknown = connect(&env.url_for("ghost", "nope"))
        .await
        .expect_err("unknown user refused");
    assert_eq!(sqlstate(&wrong).as_deref(), Some("28P01"));
    assert_eq!(sqlstate(&unknown).as_deref(), Some("28P01"));
    let msg = |e: &tokio_postgres::Error| e.as_db_error().unwrap().message().to_string();
    assert_eq!(
        msg(&wrong),
        "pgsplit: password authentication failed for user \"app\""
    );
    assert_eq!(
        msg(&unknown),
        "pgsplit: password authentication failed for user \"ghost\""
    );
    assert!(connect(&env.url()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_client_authentication() {
    let env = TestEnv::start(0, "auth_type = \"md5\"").await;
    let client = env.connect().await;
    assert_eq!(
        client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "app"
    );
    let wrong = connect(&env.url_for("app", "nope")).await.err().unwrap();
    assert_eq!(sqlstate(&wrong).as_deref(), Some("28P01"));
    let unknown = connect(&env.url_for("ghost", "nope")).await.err().unwrap();
    assert_eq!(sqlstate(&unknown).as_deref(), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_asking_md5_cleartext_trust_and_scram() {
    let env = TestEnv::start(0, "").await;
    for (user, password, method) in
        AUTH_USERS
            .iter()
            .chain([&("app", "app-secret", "scram-sha-256")])
    {
        let client = connect(&env.url_for(user, password))
            .await
            .unwrap_or_else(|e| panic!("{method} login for {user}: {e}"));
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(&who, user, "server auth method {method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined() {
    let env = TestEnv::start(0, "").await;
    for code in [80877103i32, 80877104] {
        let mut c = Raw::connect(env.addr).await;
        let mut packet = 8i32.to_be_bytes().to_vec();
        packet.extend_from_slice(&code.to_be_bytes());
        c.send(&packet).await;
        assert_eq!(c.recv_bytes(1).await, b"N");
        c.send(&raw::startup_packet(
            196608,
            &[("user", "app"), ("database", "app")],
        ))
        .await;
        c.authenticate("app", "app-secret").await;
        c.send(&raw::query("SELECT 1")).await;
        assert_eq!(c.recv_until(b'Z').await.len(), 4);
    }
    // psql with sslmode=prefer falls back to plaintext; require fails clearly.
    let url = format!("postgres://app@127.0.0.1:{}/app", env.addr.port());
    let out = std::process::Command::new("psql")
        .args([&format!("{url}?sslmode=prefer"), "-Atc", "SELECT 7"])
        .env("PGPASSWORD", "app-secret")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    let out = std::process::Command::new("psql")
        .args([&format!("{url}?sslmode=require"), "-Atc", "SELECT 7"])
        .env("PGPASSWORD", "app-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SSL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_versions() {
    let env = TestEnv::start(0, "").await;
    let mut old = Raw::connect(env.addr).await;
    old.send(&raw::startup_packet(0x0002_0000, &[("user", "app")]))
        .await;
    let (tag, body) = old.recv().await.unwrap();
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C'), "0A000");
    assert!(field(&body, b'M').contains("unsupported frontend protocol 2.0"));
    assert!(old.recv().await.is_none());

    // 3.2 with a protocol option: NegotiateProtocolVersion, then login.
    let mut newer = Raw::connect(env.addr).await;
    newer
        .send(&raw::startup_packet(
            0x0003_0002,
            &[("user", "app"), ("database", "app"), ("_pq_.future", "1")],
        ))
        .await;
    let (tag, body) = newer.recv().await.unwrap();
    assert_eq!(tag, b'v');
    assert_eq!(raw::be_i32(&body), 0x0003_0000 & 0xffff);
    assert_eq!(raw::be_i32(&body[4..]), 1);
    assert_eq!(&body[8..], b"_pq_.future\0");
    newer.authenticate("app", "app-secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_parameters_reach_the_server_per_client() {
    // One server connection, two clients with different settings.
    let env = TestEnv::start(0, "pool_size = 1").await;
    let a = connect(&format!("{}&application_name=alpha&options=-c%20search_path%3Dpg_catalog%20-c%20TimeZone%3DAsia/Tokyo", env.url()))
        .await
        .unwrap();
    let b = connect(&format!("{}&application_name=beta", env.url()))
        .await
        .unwrap();
    for _ in 0..3 {
        let ra = a
            .query_one("SELECT current_setting('application_name'), current_setting('search_path'), current_setting('TimeZone')", &[])
            .await
            .unwrap();
        assert_eq!(ra.get::<_, String>(0), "alpha");
        assert_eq!(ra.get::<_, String>(1), "pg_catalog");
        assert_eq!(ra.get::<_, String>(2), "Asia/Tokyo");
        let rb = b
            .query_one("SELECT current_setting('application_name'), current_setting('search_path'), current_setting('TimeZone')", &[])
            .await
            .unwrap();
        assert_eq!(rb.get::<_, String>(0), "beta");
        assert_eq!(rb.get::<_, String>(1), "\"$user\", public");
        assert_ne!(rb.get::<_, String>(2), "Asia/Tokyo");
    }
    assert_eq!(env.app_backends(), 1);
    // An invalid startup setting is refused the way PostgreSQL refuses it:
    // at login when a server is free to check it, else at first use.
    let bad_url = format!("{}&options=-c%20TimeZone%3DNowhere/City", env.url());
    let err = match connect(&bad_url).await {
        Err(e) => e,
        Ok(c) => c
            .query_one("SELECT 1", &[])
            .await
            .expect_err("refused at first use"),
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_relayed_from_the_server() {
    let env = TestEnv::start(0, "").await;
    let url = format!(
        "postgres://app:app-secret@127.0.0.1:{}/no_such_db",
        env.addr.port()
    );
    let err = connect(&url).await.err().unwrap();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_connections_gives_53300() {
    let env = TestEnv::start(0, "max_client_connections = 2").await;
    let _a = env.connect().await;
    let _b = env.connect().await;
    let err = connect(&env.url()).await.err().unwrap();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    drop(_a);
    // The slot frees when a client leaves.
    let mut ok = false;
    for _ in 0..50 {
        if connect(&env.url()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_login_timeout() {
    let env = TestEnv::start(0, "client_login_timeout = \"500ms\"").await;
    let mut c = Raw::connect(env.addr).await;
    // Half a startup packet, then nothing.
    c.send(&[0, 0, 0, 40, 0, 3]).await;
    let (tag, body) = c.recv().await.expect("an error before close");
    assert_eq!(tag, b'E');
    assert_eq!(field(&body, b'C'), "08P01");
    assert!(c.recv().await.is_none());
}
