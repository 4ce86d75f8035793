//! `PGSPLIT_PROXY_<KEY>` environment variables override keys of `[proxy]`,
//! so that a Kubernetes Deployment can tune pgsplit without a new ConfigMap.

use super::{ConfigError, ProxyConfig};

const PREFIX: &str = "PGSPLIT_PROXY_";

/// Applies overrides to the `proxy` table; returns whether any applied.
/// Values are read as TOML (numbers, booleans) and fall back to strings.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    file: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<bool, ConfigError> {
    let known = known_keys();
    let mut any = false;
    for (name, raw) in vars {
        let Some(key) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if !known.contains(&key) {
            return Err(ConfigError {
                file: format!("{file} (environment)"),
                key: name.clone(),
                problem: format!("\"{key}\" is not a key of [proxy]"),
            });
        }
        let value = parse_value(&raw);
        let proxy = table
            .entry("proxy")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(proxy) = proxy.as_table_mut() else {
            return Err(ConfigError {
                file: file.to_string(),
                key: "proxy".into(),
                problem: "must be a table".into(),
            });
        };
        proxy.insert(key, value);
        any = true;
    }
    Ok(any)
}

/// The keys of `[proxy]`, read off the defaults so the list cannot drift.
fn known_keys() -> Vec<String> {
    // Optional keys are left out when unset, so set them for the listing.
    let all = ProxyConfig {
        tls_cert_file: Some(Default::default()),
        tls_key_file: Some(Default::default()),
        server_tls_ca_file: Some(Default::default()),
        ..ProxyConfig::default()
    };
    match toml::Value::try_from(all) {
        Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn parse_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_proxy_keys() {
        let keys = known_keys();
        assert!(keys.iter().any(|k| k == "listen"));
        assert!(keys.iter().any(|k| k == "pool_size"));
        assert!(keys.iter().any(|k| k == "tls_cert_file"));
    }

    #[test]
    fn values_keep_their_type() {
        assert_eq!(parse_value("7"), toml::Value::Integer(7));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("5s"), toml::Value::String("5s".into()));
    }
}
