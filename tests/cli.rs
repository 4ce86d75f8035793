//! The `pgsplit` binary's command line: `check` prints the effective config
//! with secrets masked and fails precisely on bad input.

use std::process::Command;

fn pgsplit(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsplit"));
    cmd.args(args).env_remove("PGSPLIT_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgsplit")
}

fn write(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("pgsplit-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn check_accepts_the_shipped_local_config_and_masks_secrets() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/local.toml");
    let out = pgsplit(&["check", "--config", path], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("pool_mode = \"transaction\""), "{shown}");
    assert!(shown.contains("****"));
    assert!(!shown.contains("app-secret"));
    // PGSPLIT_CONFIG works in place of --config, and env overrides apply.
    let out = pgsplit(
        &["check"],
        &[("PGSPLIT_CONFIG", path), ("PGSPLIT_PROXY_POOL_SIZE", "7")],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("pool_size = 7"));
}

#[test]
fn check_accepts_every_shipped_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let secret = write("zalando-password", "from-a-secret\n");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // The Kubernetes example reads its password from a mounted Secret.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/etc/pgsplit/secrets/app/password", &secret);
        let copy = write("shipped.toml", &text);
        let out = pgsplit(&["check", "--config", &copy], &[]);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("from-a-secret"));
        checked += 1;
        let _ = std::fs::remove_file(&copy);
    }
    let _ = std::fs::remove_file(&secret);
    assert!(checked >= 3, "local, patroni and kubernetes examples");
}

#[test]
fn check_names_file_key_and_problem() {
    let path = write(
        "bad.toml",
        "[proxy]\npool_size = -3\n[[users]]\nname = \"a\"\npassword = \"b\"\n[[clusters]]\nname = \"m\"\n[clusters.discovery]\nkind = \"static\"\nleader = \"h:1\"\n",
    );
    let out = pgsplit(&["check", "--config", &path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path), "{err}");
    assert!(err.contains("pool_size"), "{err}");
    let out = pgsplit(&["--config", &path], &[]);
    assert_eq!(out.status.code(), Some(2), "run refuses it too");
    std::fs::remove_file(path).unwrap();
    let out = pgsplit(&["check", "--config", "/nonexistent/pgsplit.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pgsplit.toml"));
}

#[test]
fn missing_config_is_explained() {
    let out = pgsplit(&["check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}
