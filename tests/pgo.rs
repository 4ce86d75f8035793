//! The release build's profile-guided optimisation: `.cargo/config.toml`
//! names `scripts/rustc-pgo`, which hands the committed profile to
//! optimised compilations only, and the profile is there and readable as
//! LLVM's indexed format.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn profile() -> PathBuf {
    root().join("pgo/pgsplit.profdata")
}

/// Runs the wrapper with `echo` standing in for rustc and returns the
/// arguments it would have compiled with.
fn wrapped(args: &[&str], pgo: Option<&str>) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg(root().join("scripts/rustc-pgo"))
        .arg("echo")
        .args(args);
    cmd.env_remove("PGSPLIT_PGO");
    if let Some(value) = pgo {
        cmd.env("PGSPLIT_PGO", value);
    }
    let out = cmd.output().expect("sh runs the wrapper");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim_end()
        .to_string()
}

fn use_flag() -> String {
    format!("-Cprofile-use={}", profile().display())
}

#[test]
fn cargo_config_names_the_wrapper() {
    let config = std::fs::read_to_string(root().join(".cargo/config.toml")).expect("config");
    let config: toml::Table = config.parse().expect("toml");
    assert_eq!(
        config["build"]["rustc-wrapper"].as_str(),
        Some("scripts/rustc-pgo")
    );
}

#[test]
fn optimised_compilations_get_the_profile_by_its_absolute_path() {
    let args = ["--crate-name", "tokio", "-C", "opt-level=3", "src/lib.rs"];
    assert_eq!(
        wrapped(&args, None),
        format!("{} {}", args.join(" "), use_flag())
    );
    assert_eq!(
        wrapped(&["-Copt-level=3"], Some("1")),
        format!("-Copt-level=3 {}", use_flag())
    );
}

#[test]
fn other_compilations_pass_through_untouched() {
    for args in [
        // Tests, clippy and rustc's own probes.
        vec!["--crate-name", "pgsplit", "-C", "opt-level=0"],
        vec!["-vV"],
        // Builds that profile or instrument themselves.
        vec!["-C", "opt-level=3", "-Cprofile-generate=/tmp/counts"],
        vec!["-C", "opt-level=3", "-Cpasses=sancov-module"],
        vec!["-C", "opt-level=3", "-Cprofile-use=/elsewhere.profdata"],
    ] {
        assert_eq!(wrapped(&args, None), args.join(" "));
    }
    for off in ["0", "false", "no", "off"] {
        assert_eq!(wrapped(&["-C", "opt-level=3"], Some(off)), "-C opt-level=3");
    }
}

#[test]
fn the_profile_is_committed_in_llvm_indexed_format() {
    let bytes = std::fs::read(profile()).expect("pgo/pgsplit.profdata is committed");
    // IndexedInstrProf's magic number, little-endian: 0xff 'l' 'p' 'r' 'o' 'f' 'i' 0x81.
    assert_eq!(bytes.get(..8), Some(&b"\xfflprofi\x81"[..]));
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
}

#[test]
fn the_container_build_has_what_the_wrapper_needs() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    for copy in [
        "COPY .cargo ./.cargo",
        "COPY scripts/rustc-pgo ./scripts/rustc-pgo",
        "COPY pgo ./pgo",
    ] {
        assert!(
            dockerfile.contains(copy),
            "deploy/Dockerfile lacks {copy:?}"
        );
    }
}
