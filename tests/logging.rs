//! Logging: JSON lines when asked, levels from the config, a line per
//! client login and close with its reason, and never a password.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn json_lines_with_reasons_and_no_secrets() {
    let dir = std::env::temp_dir().join(format!("pgsplit-logging-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgsplit.toml");
    let port = pgsplit::demo::cluster::free_port().unwrap();
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_delay = \"0s\"\n\
             log_format = \"json\"\nlog_level = \"warn,pgsplit::client=info\"\nauth_type = \"md5\"\n\
             [[users]]\nname = \"app\"\npassword = \"s3cret-pw\"\n\
             [[clusters]]\nname = \"m\"\n[clusters.discovery]\nkind = \"static\"\nleader = \"127.0.0.1:1\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .arg("--config")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // Wait for the listener, then log in with the right and a wrong password.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pgsplit never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    for password in ["s3cret-pw", "wrong-pw"] {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "app",
                "-d",
                "app",
                "-c",
                "SELECT 1",
            ])
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let lines = reader.join().unwrap();
    assert!(!lines.is_empty());
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refused: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|v| v["fields"]["message"] == "client login refused")
        .collect();
    assert_eq!(refused.len(), 2, "{lines:#?}");
    assert!(
        refused
            .iter()
            .any(|v| v["fields"]["reason"] == "auth_failed"),
        "{lines:#?}"
    );
    // warn overall: the info line "pgsplit is accepting clients" is not there.
    assert!(
        !lines.iter().any(|l| l.contains("accepting clients")),
        "{lines:#?}"
    );
    assert!(!lines
        .iter()
        .any(|l| l.contains("s3cret-pw") || l.contains("wrong-pw")));
    let _ = std::fs::remove_dir_all(&dir);
}
