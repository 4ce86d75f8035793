//! `PGSPLIT_PROXY_<KEY>` and `PGSPLIT_ROUTING_<KEY>` environment variables
//! override keys of `[proxy]` and `[routing]`, so that a Kubernetes
//! Deployment can tune pgsplit without a new ConfigMap. List values are
//! comma-separated.

use super::{ConfigError, ProxyConfig, RoutingConfig};

/// (variable prefix, table) pairs that take overrides.
const SECTIONS: &[(&str, &str)] = &[("PGSPLIT_PROXY_", "proxy"), ("PGSPLIT_ROUTING_", "routing")];

/// Applies overrides to the tables; returns whether any applied. Values
/// are read as TOML (numbers, booleans) and fall back to strings.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    file: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<bool, ConfigError> {
    let mut any = false;
    for (name, raw) in vars {
        let Some((section, key)) = SECTIONS
            .iter()
            .find_map(|(prefix, section)| Some((*section, name.strip_prefix(prefix)?)))
        else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        let defaults = known_keys(section);
        let Some(default) = defaults.get(&key) else {
            return Err(ConfigError {
                file: format!("{file} (environment)"),
                key: name.clone(),
                problem: format!("\"{key}\" is not a key of [{section}]"),
            });
        };
        let value = if default.is_array() {
            toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            )
        } else {
            parse_value(&raw)
        };
        let target = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(target) = target.as_table_mut() else {
            return Err(ConfigError {
                file: file.to_string(),
                key: section.into(),
                problem: "must be a table".into(),
            });
        };
        target.insert(key, value);
        any = true;
    }
    Ok(any)
}

/// The keys of a section with their default values, read off the defaults
/// so the list cannot drift.
fn known_keys(section: &str) -> toml::Table {
    // Optional keys are left out when unset, so set them for the listing.
    let all = match section {
        "proxy" => toml::Value::try_from(ProxyConfig {
            tls_cert_file: Some(Default::default()),
            tls_key_file: Some(Default::default()),
            server_tls_ca_file: Some(Default::default()),
            ..ProxyConfig::default()
        }),
        _ => toml::Value::try_from(RoutingConfig {
            probe_user: Some(String::new()),
            ..RoutingConfig::default()
        }),
    };
    match all {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
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
    fn knows_proxy_and_routing_keys() {
        let keys = known_keys("proxy");
        assert!(keys.contains_key("listen"));
        assert!(keys.contains_key("pool_size"));
        assert!(keys.contains_key("tls_cert_file"));
        let keys = known_keys("routing");
        assert!(keys.contains_key("zone"));
        assert!(keys.contains_key("probe_user"));
        assert!(keys["write_functions"].is_array());
    }

    #[test]
    fn values_keep_their_type() {
        assert_eq!(parse_value("7"), toml::Value::Integer(7));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("5s"), toml::Value::String("5s".into()));
    }
}
