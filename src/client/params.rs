//! Session parameters a client asked for (startup packet, `options=-c ...`,
//! and reported changes from its own SET), applied to whichever server it
//! gets. In transaction mode a server that last served another client is
//! brought to this client's values with one `set_config` round trip, and
//! only when something differs.

use crate::pool::server::{ServerConn, ServerError};
use crate::wire::messages::ProxyError;
use crate::wire::startup::split_options;

/// Parameters the server reports (GUC_REPORT) that a client may change with
/// SET; their ParameterStatus updates are followed into the client's set.
const FOLLOWED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// One client's wanted parameter values.
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    values: Vec<(String, String)>,
    /// Bumped on every change, so a server that carries this version for
    /// this client needs no comparison.
    version: u64,
}

impl ClientParams {
    /// Collects settings from the startup packet and its `options`.
    pub fn from_startup(params: &[(String, String)]) -> Result<ClientParams, ProxyError> {
        let mut out = ClientParams::default();
        for (name, value) in params {
            if name == "options" {
                let pairs = split_options(value)
                    .map_err(|e| ProxyError::fatal("08P01", format!("invalid options: {e}")))?;
                for (n, v) in pairs {
                    out.set(&n, &v)?;
                }
            } else if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                out.set(name, value)?;
            }
        }
        Ok(out)
    }

    fn set(&mut self, name: &str, value: &str) -> Result<(), ProxyError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(ProxyError::fatal(
                "42602",
                format!("invalid parameter name \"{name}\" in startup packet"),
            ));
        }
        match self
            .values
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = value.to_string(),
            None => self.values.push((name.to_string(), value.to_string())),
        }
        self.version += 1;
        Ok(())
    }

    /// The value the client wants for `name`, if it asked for one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The server reported `name = value` while serving this client: the
    /// client changed it (SET, RESET, or a rollback undoing a SET).
    pub fn follow_report(&mut self, name: &str, value: &str) {
        let tracked =
            self.get(name).is_some() || FOLLOWED.iter().any(|f| f.eq_ignore_ascii_case(name));
        if tracked && self.get(name) != Some(value) {
            // Names here come from a server report or were validated before.
            let _ = self.set(name, value);
        }
    }

    /// The ParameterStatus values a client should see: the server's
    /// startup values with the client's own settings over them.
    pub fn overlay<'a>(
        &'a self,
        startup: &'a [(String, String)],
    ) -> impl Iterator<Item = (&'a str, &'a str)> {
        startup
            .iter()
            .map(|(name, value)| (name.as_str(), self.get(name).unwrap_or(value)))
    }

    /// What must change on `server` for this client: parameters to set to
    /// the client's values, and parameters another client changed that
    /// this client never asked for, to RESET to their defaults.
    fn plan(&self, server: &ServerConn) -> (Vec<usize>, Vec<String>) {
        let sets = (0..self.values.len())
            .filter(|&i| {
                let (name, value) = &self.values[i];
                server.current(name) != Some(value.as_str())
            })
            .collect();
        let mut resets: Vec<String> = server
            .settings()
            .iter()
            .filter(|(name, _)| self.get(name).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in FOLLOWED {
            if self.get(name).is_none() && server.reported(name) != server.default_value(name) {
                resets.push(name.to_string());
            }
        }
        (sets, resets)
    }

    /// The statements carrying out a plan.
    fn plan_sql(&self, sets: &[usize], resets: &[String]) -> String {
        let mut sql = String::new();
        for name in resets {
            sql.push_str("RESET ");
            push_ident(&mut sql, name);
            sql.push_str("; ");
        }
        for (i, &index) in sets.iter().enumerate() {
            let (name, value) = &self.values[index];
            sql.push_str(if i == 0 { "SELECT " } else { ", " });
            sql.push_str("pg_catalog.set_config(");
            push_literal(&mut sql, name);
            sql.push_str(", ");
            push_literal(&mut sql, value);
            sql.push_str(", false)");
        }
        sql
    }

    /// Makes `server` carry this client's values. `client_id` with the
    /// version lets a client skip the work on a server it left unchanged.
    /// Values the server reports back are adopted in the server's spelling
    /// ("ISO" becomes "ISO, MDY") so later comparisons match.
    pub async fn apply(
        &mut self,
        server: &mut ServerConn,
        client_id: u64,
    ) -> Result<(), ServerError> {
        if server.applied_for == Some((client_id, self.version)) {
            return Ok(());
        }
        let (sets, resets) = self.plan(server);
        if !sets.is_empty() || !resets.is_empty() {
            server.run_simple(&self.plan_sql(&sets, &resets)).await?;
            for name in &resets {
                server.forget_setting(name);
            }
            for &index in &sets {
                let (name, value) = &mut self.values[index];
                match server.reported(name) {
                    Some(reported) if reported != value => *value = reported.to_string(),
                    Some(_) => {}
                    None => server.note_setting(name, value),
                }
            }
        }
        server.applied_for = Some((client_id, self.version));
        Ok(())
    }
}

/// Appends a (possibly dotted) parameter name as quoted identifiers.
fn push_ident(out: &mut String, name: &str) {
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push('"');
        out.push_str(&part.replace('"', "\"\""));
        out.push('"');
    }
}

/// Appends `value` as an escape-string literal, safe whatever
/// standard_conforming_strings says.
fn push_literal(out: &mut String, value: &str) {
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn collects_settings_and_options() {
        let p = ClientParams::from_startup(&startup(&[
            ("user", "app"),
            ("database", "db"),
            ("application_name", "psql"),
            ("options", "-c search_path=s1 -c statement_timeout=5s"),
            ("_pq_.extension", "x"),
        ]))
        .unwrap();
        assert_eq!(p.get("application_name"), Some("psql"));
        assert_eq!(p.get("search_path"), Some("s1"));
        assert_eq!(p.get("statement_timeout"), Some("5s"));
        assert_eq!(p.get("user"), None);
        assert_eq!(p.get("_pq_.extension"), None);
    }

    #[test]
    fn rejects_bad_names_and_options() {
        assert!(ClientParams::from_startup(&startup(&[("bad name", "x")])).is_err());
        assert!(ClientParams::from_startup(&startup(&[("options", "-c")])).is_err());
    }

    #[test]
    fn follows_reported_changes_only_for_session_settings() {
        let mut p = ClientParams::default();
        let v = p.version;
        p.follow_report("TimeZone", "UTC");
        assert_eq!(p.get("timezone"), Some("UTC"));
        assert!(p.version > v);
        p.follow_report("is_superuser", "on");
        assert_eq!(p.get("is_superuser"), None);
    }

    #[test]
    fn identifiers_are_quoted_per_part() {
        let mut s = String::new();
        push_ident(&mut s, "my.setting");
        assert_eq!(s, "\"my\".\"setting\"");
    }

    #[test]
    fn literals_are_escaped() {
        let mut s = String::new();
        push_literal(&mut s, "it's a \\ test");
        assert_eq!(s, "E'it''s a \\\\ test'");
    }
}
