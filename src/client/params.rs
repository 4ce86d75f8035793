//! Session state a client asked for, carried to whichever server it gets.
//!
//! - Startup parameters (`application_name`, `DateStyle`, `options=-c ...`)
//!   and changes the server reports in ParameterStatus (`SET TimeZone`,
//!   including the undo of a rollback) are values, applied with
//!   `set_config`.
//! - Session-level `SET`/`RESET` of unreported parameters (`search_path`,
//!   `statement_timeout`, custom GUCs) are recognised from the statement
//!   text and replayed as `SET name TO <the client's SQL>`; they count once
//!   their transaction commits and are forgotten if it rolls back.
//! - A server that another client changed is brought back with `RESET` for
//!   what this client never asked for. One round trip, only when something
//!   differs.

use crate::pool::server::{ServerConn, ServerError};
use crate::route::classify::Target;
use crate::route::session::Effect;
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

/// How a parameter gets its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Value {
    /// A plain value, applied with `set_config`.
    Text(String),
    /// The SQL after `SET name TO`, replayed as written.
    Sql(String),
}

impl Value {
    /// What a server's record of this parameter is compared with. SQL
    /// values start with a NUL, which no real value contains.
    fn fingerprint(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Value::Text(v) => std::borrow::Cow::Borrowed(v),
            Value::Sql(sql) => std::borrow::Cow::Owned(format!("\0{sql}")),
        }
    }
}

/// One client's wanted session state.
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    values: Vec<(String, Value)>,
    /// The startup values: what RESET ALL and DISCARD ALL return to.
    startup: Vec<(String, String)>,
    /// Bumped on every change to `values`.
    version: u64,
    /// (version, digest) of `values`, computed when first needed.
    digest: Option<(u64, u64)>,
    /// SET/RESET effects of a transaction not yet committed.
    pending: Vec<Effect>,
    /// An error or rollback happened since the pending effects were sent.
    pending_failed: bool,
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
                    out.set_startup(&n, &v)?;
                }
            } else if !NOT_SETTINGS.contains(&name.as_str()) && !name.starts_with("_pq_.") {
                out.set_startup(name, value)?;
            }
        }
        Ok(out)
    }

    fn set_startup(&mut self, name: &str, value: &str) -> Result<(), ProxyError> {
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
        self.set(name, Value::Text(value.to_string()));
        match self
            .startup
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = value.to_string(),
            None => self.startup.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    fn set(&mut self, name: &str, value: Value) {
        match self
            .values
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) if *v == value => return,
            Some((_, v)) => *v = value,
            None => self.values.push((name.to_string(), value)),
        }
        self.version += 1;
    }

    fn remove(&mut self, name: &str) {
        let before = self.values.len();
        self.values.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if self.values.len() != before {
            self.version += 1;
        }
    }

    fn value(&self, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The session's `pgsplit.target` (startup option or SET), when it
    /// says leader or replica; `auto`, anything else or unset: `None`.
    pub fn route_target(&self) -> Option<Target> {
        if self.values.is_empty() {
            return None;
        }
        let raw = match self.value("pgsplit.target")? {
            Value::Text(v) => v.as_str(),
            Value::Sql(sql) => sql.trim().trim_matches('\''),
        };
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("leader") {
            Some(Target::Leader)
        } else if raw.eq_ignore_ascii_case("replica") {
            Some(Target::Replica)
        } else {
            None
        }
    }

    /// The plain value the client wants for `name`, if it asked for one.
    pub fn get(&self, name: &str) -> Option<&str> {
        match self.value(name)? {
            Value::Text(v) => Some(v),
            Value::Sql(_) => None,
        }
    }

    /// The server reported `name = value` while serving this client: the
    /// client changed it (SET, RESET, or a rollback undoing a SET).
    pub fn follow_report(&mut self, name: &str, value: &str) {
        let tracked =
            self.value(name).is_some() || FOLLOWED.iter().any(|f| f.eq_ignore_ascii_case(name));
        if tracked {
            self.set(name, Value::Text(value.to_string()));
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

    /// Session effects of a statement the client sent; they count when its
    /// transaction commits.
    pub fn record_effects(&mut self, effects: impl IntoIterator<Item = Effect>) {
        self.pending.extend(effects.into_iter().filter(|e| {
            matches!(
                e,
                Effect::Set { .. } | Effect::Reset { .. } | Effect::ResetAll | Effect::DiscardAll
            )
        }));
    }

    /// The request carrying pending effects is sent again: they will be
    /// recorded again.
    pub fn forget_pending(&mut self) {
        self.pending.clear();
        self.pending_failed = false;
    }

    /// Whether SET/RESET effects wait for their transaction's outcome.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The server reported an error or a ROLLBACK: pending effects die with
    /// the transaction.
    pub fn transaction_failed(&mut self) {
        if !self.pending.is_empty() {
            self.pending_failed = true;
        }
    }

    /// ReadyForQuery with `status`: outside a transaction, pending effects
    /// either took hold (and `server` now carries them) or were undone.
    pub fn ready(&mut self, status: u8, server: &mut ServerConn) {
        if status != b'I' || self.pending.is_empty() {
            return;
        }
        let failed = std::mem::take(&mut self.pending_failed);
        let effects = std::mem::take(&mut self.pending);
        if failed {
            return;
        }
        for effect in effects {
            match effect {
                Effect::Set { name, sql } => {
                    let value = Value::Sql(sql);
                    server.note_setting(&name, &value.fingerprint());
                    self.set(&name, value);
                }
                Effect::Reset { name } => {
                    server.forget_setting(&name);
                    match self
                        .startup
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                        .cloned()
                    {
                        Some((n, v)) => self.set(&n, Value::Text(v)),
                        None => self.remove(&name),
                    }
                }
                Effect::ResetAll | Effect::DiscardAll => self.reset_all(server),
                _ => {}
            }
        }
        server.applied_for = None;
    }

    /// RESET ALL / DISCARD ALL: back to the startup values.
    fn reset_all(&mut self, server: &mut ServerConn) {
        let names: Vec<String> = server.settings().iter().map(|(n, _)| n.clone()).collect();
        for name in names {
            server.forget_setting(&name);
        }
        self.values.retain(|(_, v)| matches!(v, Value::Text(_)));
        for (name, value) in self.startup.clone() {
            self.set(&name, Value::Text(value));
        }
        self.version += 1;
    }

    /// Whether anything on `server` differs from what this client wants;
    /// the common answer (no) costs no allocation.
    fn differs(&self, server: &ServerConn) -> bool {
        self.values
            .iter()
            .any(|(name, value)| server.current(name) != Some(&*value.fingerprint()))
            || server
                .settings()
                .iter()
                .any(|(name, _)| self.value(name).is_none())
            || FOLLOWED.iter().any(|name| {
                self.value(name).is_none() && server.reported(name) != server.default_value(name)
            })
    }

    /// What must change on `server` for this client: parameters to set to
    /// the client's values, and parameters another client changed that
    /// this client never asked for, to RESET to their defaults.
    fn plan(&self, server: &ServerConn) -> (Vec<usize>, Vec<String>) {
        let sets = (0..self.values.len())
            .filter(|&i| {
                let (name, value) = &self.values[i];
                server.current(name) != Some(&*value.fingerprint())
            })
            .collect();
        let mut resets: Vec<String> = server
            .settings()
            .iter()
            .filter(|(name, _)| self.value(name).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in FOLLOWED {
            if self.value(name).is_none() && server.reported(name) != server.default_value(name) {
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
        let mut first_text = true;
        for &index in sets {
            if let (name, Value::Sql(v)) = &self.values[index] {
                sql.push_str("SET ");
                push_ident(&mut sql, name);
                sql.push_str(" TO ");
                sql.push_str(v);
                sql.push_str("; ");
            }
        }
        for &index in sets {
            let (name, value) = &self.values[index];
            if let Value::Text(v) = value {
                sql.push_str(if first_text { "SELECT " } else { ", " });
                first_text = false;
                sql.push_str("pg_catalog.set_config(");
                push_literal(&mut sql, name);
                sql.push_str(", ");
                push_literal(&mut sql, v);
                sql.push_str(", false)");
            }
        }
        sql
    }

    /// Whether `server` already carries this client's values (nothing to
    /// send); remembered on the server for the next checkout.
    pub fn carried_by(&mut self, server: &mut ServerConn) -> bool {
        let digest = self.digest();
        if server.applied_for == Some(digest) || !self.differs(server) {
            server.applied_for = Some(digest);
            return true;
        }
        false
    }

    /// Makes `server` carry this client's values.
    /// Values the server reports back are adopted in the server's spelling
    /// ("ISO" becomes "ISO, MDY") so later comparisons match.
    pub async fn apply(&mut self, server: &mut ServerConn) -> Result<(), ServerError> {
        if self.carried_by(server) {
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
                match (server.reported(name), &*value) {
                    (Some(reported), Value::Text(v)) if reported != v => {
                        *value = Value::Text(reported.to_string());
                        self.version += 1;
                    }
                    (Some(_), _) => {}
                    (None, _) => server.note_setting(name, &value.fingerprint()),
                }
            }
        }
        server.applied_for = Some(self.digest());
        Ok(())
    }

    /// A digest of every value this client wants. Servers remember the
    /// digest they were last brought to, so the common checkout (a server
    /// last used by a client with the same settings) costs one comparison.
    /// The hasher is keyed per process, so no client can aim a collision.
    fn digest(&mut self) -> u64 {
        use std::hash::{BuildHasher, Hash, Hasher};
        static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        if let Some((version, digest)) = self.digest {
            if version == self.version {
                return digest;
            }
        }
        let mut h = KEYS.get_or_init(Default::default).build_hasher();
        for (name, value) in &self.values {
            name.to_ascii_lowercase().hash(&mut h);
            value.hash(&mut h);
        }
        let digest = h.finish();
        self.digest = Some((self.version, digest));
        digest
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
    fn route_target_from_startup_and_set() {
        let mut p =
            ClientParams::from_startup(&startup(&[("options", "-c pgsplit.target=leader")]))
                .unwrap();
        assert_eq!(p.route_target(), Some(Target::Leader));
        p.set("pgsplit.target", Value::Sql("'Replica'".into()));
        assert_eq!(p.route_target(), Some(Target::Replica));
        p.set("pgsplit.target", Value::Sql("'auto'".into()));
        assert_eq!(p.route_target(), None);
        assert_eq!(ClientParams::default().route_target(), None);
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
    fn plan_sql_resets_sets_and_replays() {
        let mut p = ClientParams::default();
        p.set("search_path", Value::Sql("app, public".into()));
        p.set("application_name", Value::Text("it's".into()));
        let sql = p.plan_sql(&[0, 1], &["my.guc".to_string()]);
        assert_eq!(
            sql,
            "RESET \"my\".\"guc\"; SET \"search_path\" TO app, public; SELECT pg_catalog.set_config(E'application_name', E'it''s', false)"
        );
    }

    #[test]
    fn literals_are_escaped() {
        let mut s = String::new();
        push_literal(&mut s, "it's a \\ test");
        assert_eq!(s, "E'it''s a \\\\ test'");
    }
}
