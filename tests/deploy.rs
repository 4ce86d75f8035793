//! deploy/: every kustomize overlay renders, every YAML file parses, the
//! TOML in every rendered ConfigMap passes `pgsplit check`, and the
//! Grafana dashboard asks only for metrics pgsplit exports.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Parses YAML documents with Python's yaml and returns them as JSON values.
fn yaml_documents(text: &str, what: &str) -> Vec<serde_json::Value> {
    let script = "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))";
    // Debian's python3 has python3-yaml (a dependency of Patroni, which
    // the test command installs); another python3 first on PATH may not.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} is not valid YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // Helm templates are Go templates, not YAML, until rendered.
            if path.file_name().is_some_and(|n| n == "templates") {
                continue;
            }
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_file_parses() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    assert!(files.len() >= 12, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        yaml_documents(&text, &f.display().to_string());
    }
}

/// `pgsplit check` on a config whose password files point at `secret`.
fn check_config(toml: &str, what: &str) {
    let dir = std::env::temp_dir().join(format!("pgsplit-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("password");
    std::fs::write(&secret, "from-a-secret\n").unwrap();
    let text = toml.replace(
        "/etc/pgsplit/secrets/app/password",
        &secret.display().to_string(),
    );
    let file = dir.join("pgsplit.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["check", "--config"])
        .arg(&file)
        .env_remove("PGSPLIT_CONFIG")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kustomize_renders_every_overlay_with_a_valid_config() {
    let kustomize = root().join("deploy/kustomize");
    let mut targets = vec![kustomize.join("base")];
    for entry in std::fs::read_dir(kustomize.join("overlays")).unwrap() {
        targets.push(entry.unwrap().path());
    }
    assert!(
        targets.len() >= 3,
        "base plus the zalando and cnpg overlays"
    );
    for target in targets {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(&target)
            .output()
            .expect("kubectl is installed");
        assert!(
            out.status.success(),
            "{}: {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = yaml_documents(&String::from_utf8_lossy(&out.stdout), "kustomize output");
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for kind in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "PodDisruptionBudget",
            "ConfigMap",
        ] {
            assert!(kinds.contains(&kind), "{}: no {kind}", target.display());
        }
        let config = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .and_then(|d| d["data"]["pgsplit.toml"].as_str())
            .expect("a ConfigMap with pgsplit.toml");
        check_config(config, &target.display().to_string());
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    }
}

#[test]
fn the_zalando_overlay_ships_config_kubernetes_toml() {
    let shipped = std::fs::read_to_string(root().join("config/kubernetes.toml")).unwrap();
    let overlay =
        std::fs::read_to_string(root().join("deploy/kustomize/overlays/zalando/pgsplit.toml"))
            .unwrap();
    assert_eq!(shipped, overlay, "keep the two copies equal");
}

#[test]
fn the_dashboard_uses_exported_metrics() {
    let text =
        std::fs::read_to_string(root().join("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let source = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("pgsplit_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    source.contains(&format!("\"{base}\"")),
                    "{base} is not exported"
                );
                used += 1;
            }
        }
    }
    assert!(used >= 12);
}

#[test]
fn the_helm_chart_has_the_same_objects() {
    let chart = root().join("deploy/helm/pgsplit");
    for file in ["Chart.yaml", "values.yaml"] {
        let text = std::fs::read_to_string(chart.join(file)).unwrap();
        yaml_documents(&text, file);
    }
    let templates: Vec<String> = std::fs::read_dir(chart.join("templates"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let all = templates.join("\n");
    for kind in [
        "kind: Deployment",
        "kind: Service",
        "kind: ServiceAccount",
        "kind: Role",
        "kind: RoleBinding",
        "kind: PodDisruptionBudget",
        "kind: ConfigMap",
        "kind: PodMonitor",
    ] {
        assert!(all.contains(kind), "the chart has no {kind}");
    }
    assert_eq!(all.matches("{{").count(), all.matches("}}").count());
}
