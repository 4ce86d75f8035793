use super::*;
use std::time::Duration;

const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:6432"
admin_listen = "127.0.0.1:9930"
pool_mode = "transaction"        # or "session"
pool_size = 20                   # server connections per (node, database, user)

[[users]]
name = "app"
password = "app-secret"          # used for client auth and for the servers

[[clusters]]
name = "main"                    # the only cluster: every database name routes here

[clusters.discovery]
kind = "static"                  # or "kubernetes" or "patroni"
leader = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433", "127.0.0.1:5434"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", std::iter::empty())
}

#[test]
fn minimal_design_config_works_as_written() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.proxy.listen, "127.0.0.1:6432");
    assert_eq!(c.proxy.pool_mode, PoolMode::Transaction);
    assert_eq!(c.proxy.pool_size, 20);
    assert_eq!(c.users[0].password(), "app-secret");
    assert_eq!(c.cluster_for("anything").unwrap().name, "main");
    assert_eq!(c.proxy.query_wait_timeout.0, Duration::from_secs(30));
}

#[test]
fn errors_name_file_key_and_problem() {
    let e = parse(&MINIMAL.replace("pool_size = 20", "pool_size = \"many\"")).unwrap_err();
    assert_eq!(e.file, "test.toml");
    assert!(e.key.contains("pool_size"), "{e}");
    let e = parse(&MINIMAL.replace("pool_size = 20", "pool_size = 0")).unwrap_err();
    assert_eq!(e.key, "proxy.pool_size");
    let e = parse(&MINIMAL.replace("127.0.0.1:5433", "nowhere")).unwrap_err();
    assert_eq!(e.key, "clusters[0].discovery.replicas[0]");
    let e = parse(&MINIMAL.replace("pool_mode = \"transaction\"", "pool_mode = \"statement\""))
        .unwrap_err();
    assert!(e.key.contains("pool_mode"), "{e}");
    assert!(e.problem.contains("statement"), "{e}");
    let e = parse(&MINIMAL.replace("pool_size = 20", "pool_sise = 20")).unwrap_err();
    assert!(e.problem.contains("pool_sise"), "{e}");
    let e = parse("[proxy\n").unwrap_err();
    assert!(e.key.starts_with("line 1"), "{e}");
}

#[test]
fn environment_overrides_proxy_keys() {
    let vars = vec![
        ("PGSPLIT_PROXY_POOL_SIZE".to_string(), "7".to_string()),
        (
            "PGSPLIT_PROXY_QUERY_WAIT_TIMEOUT".to_string(),
            "250ms".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let c = Config::parse(MINIMAL, "f", vars.into_iter()).unwrap();
    assert_eq!(c.proxy.pool_size, 7);
    assert_eq!(c.proxy.query_wait_timeout.0, Duration::from_millis(250));
    assert_eq!(c.proxy.worker_threads, 1, "one event loop by default");
    assert!(
        !c.proxy.yield_before_sleep,
        "does not yield before sleeping by default"
    );
    let yields = vec![(
        "PGSPLIT_PROXY_YIELD_BEFORE_SLEEP".to_string(),
        "true".to_string(),
    )];
    let c = Config::parse(MINIMAL, "f", yields.into_iter()).unwrap();
    assert!(c.proxy.yield_before_sleep);
    let threads = vec![("PGSPLIT_PROXY_WORKER_THREADS".to_string(), "0".to_string())];
    let c = Config::parse(MINIMAL, "f", threads.into_iter()).unwrap();
    assert_eq!(c.proxy.worker_threads, 0);
    let too_many = vec![(
        "PGSPLIT_PROXY_WORKER_THREADS".to_string(),
        "5000".to_string(),
    )];
    let e = Config::parse(MINIMAL, "f", too_many.into_iter()).unwrap_err();
    assert_eq!(e.key, "proxy.worker_threads");
    let bad = vec![("PGSPLIT_PROXY_NOPE".to_string(), "1".to_string())];
    let e = Config::parse(MINIMAL, "f", bad.into_iter()).unwrap_err();
    assert_eq!(e.key, "PGSPLIT_PROXY_NOPE");
}

#[test]
fn password_file_and_masking() {
    let dir = std::env::temp_dir().join(format!("pgsplit-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "from-file\n").unwrap();
    let text = MINIMAL.replace(
        "password = \"app-secret\"",
        &format!("password_file = \"{}\"", pw.display()),
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.users[0].password(), "from-file");
    let shown = c.masked_toml();
    assert!(!shown.contains("from-file"));
    assert!(shown.contains("****"));
    let missing = text.replace("pw\"", "missing\"");
    assert_eq!(parse(&missing).unwrap_err().key, "users[0].password_file");
    std::fs::remove_dir_all(dir).unwrap();
}

const STATIC_DISCOVERY: &str = "kind = \"static\"                  # or \"kubernetes\" or \"patroni\"\nleader = \"127.0.0.1:5432\"\nreplicas = [\"127.0.0.1:5433\", \"127.0.0.1:5434\"]";

#[test]
fn patroni_discovery_is_checked() {
    let with = |discovery: &str| MINIMAL.replace(STATIC_DISCOVERY, discovery);
    let ok = parse(&with(
        "kind = \"patroni\"\nurls = [\"http://127.0.0.1:8008\", \"http://10.0.0.2:8008/\"]",
    ));
    assert!(ok.is_ok(), "{ok:?}");
    let e = parse(&with("kind = \"patroni\"\nurls = []")).unwrap_err();
    assert_eq!(e.key, "clusters[0].discovery.urls");
    let e = parse(&with("kind = \"patroni\"\nurls = [\"https://h:8008\"]")).unwrap_err();
    assert_eq!(e.key, "clusters[0].discovery.urls[0]");
}

#[test]
fn kubernetes_discovery_is_checked() {
    let with = |d: &str| MINIMAL.replace(STATIC_DISCOVERY, d);
    let ok = parse(&with(
        "kind = \"kubernetes\"\nnamespace = \"default\"\nselector = \"cluster-name=acid-minimal-cluster,application=spilo\"\npreset = \"spilo\"\nport = 5432",
    ));
    assert!(ok.is_ok(), "{ok:?}");
    let e = parse(&with("kind = \"kubernetes\"\nselector = \"\"")).unwrap_err();
    assert_eq!(e.key, "clusters[0].discovery.selector");
    let e = parse(&with(
        "kind = \"kubernetes\"\nselector = \"a=b\"\nwatch_timeout = \"0s\"",
    ))
    .unwrap_err();
    assert_eq!(e.key, "clusters[0].discovery.watch_timeout");
    assert!(parse(&with(
        "kind = \"kubernetes\"\nselector = \"a=b\"\nbogus = 1"
    ))
    .is_err());
}

#[test]
fn several_clusters_need_database_lists() {
    let text = format!("{MINIMAL}\n[[clusters]]\nname = \"b\"\n[clusters.discovery]\nkind = \"static\"\nleader = \"h:1\"\n");
    assert_eq!(parse(&text).unwrap_err().key, "clusters[0].databases");
}
