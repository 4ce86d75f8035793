//! The `[routing]` table: read/write splitting, replica choice, lag limits
//! and read-your-writes. Every key has a default; `PGSPLIT_ROUTING_<KEY>`
//! environment variables override them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use super::units::{ByteSize, Seconds};

/// Where explicit transactions (plain BEGIN) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransactionRouting {
    /// The leader, unless the transaction says READ ONLY.
    #[default]
    Leader,
    /// Decided by the first statement inside: frameworks wrap reads in
    /// BEGIN. A write later in a transaction that started with a read
    /// fails on the replica with 25006 (documented trade-off).
    FirstStatement,
}

/// Whether the leader serves reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LeaderReads {
    /// Only when no replica qualifies.
    #[default]
    Fallback,
    /// Always one of the candidates for reads.
    Always,
    /// Never: reads fail with 57P03 when no replica qualifies.
    Never,
}

/// Read-your-writes scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadYourWrites {
    /// Reads may see a replica that has not replayed the client's writes.
    Off,
    /// A connection's reads see its own committed writes.
    #[default]
    Session,
    /// Every connection of a user sees that user's committed writes.
    User,
}

/// The `[routing]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// false: everything goes to the leader.
    pub read_write_split: bool,
    pub transaction_routing: TransactionRouting,
    pub leader_reads: LeaderReads,
    /// Functions that write, beyond the built-in list (names may be
    /// schema-qualified; the last part is matched).
    pub write_functions: Vec<String>,
    /// A replica further behind the leader's WAL than this leaves the read
    /// set; 0 = no limit.
    pub max_replica_lag_bytes: ByteSize,
    /// A replica missing WAL the leader had this long ago leaves the read
    /// set; 0 = no limit.
    pub max_replica_lag_seconds: Seconds,
    /// How often each member's health and WAL position are probed.
    pub probe_interval: Seconds,
    /// The user the probes log in as; default: the first `[[users]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_user: Option<String>,
    /// The database the probes connect to.
    pub probe_database: String,
    pub read_your_writes: ReadYourWrites,
    /// While a cluster has no leader, writes wait this long for one, then
    /// fail with 57P03.
    pub leader_wait_timeout: Seconds,
    /// `<database><suffix>` is a read-only alias of `<database>`; empty
    /// turns the suffix off.
    pub read_only_suffix: String,
    /// More read-only aliases: alias name = real database name.
    pub read_only_aliases: BTreeMap<String, String>,
    /// This proxy's zone; replicas in the same zone are preferred. Empty:
    /// no preference.
    pub zone: String,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            read_write_split: true,
            transaction_routing: TransactionRouting::Leader,
            leader_reads: LeaderReads::Fallback,
            write_functions: Vec::new(),
            max_replica_lag_bytes: ByteSize(16 << 20),
            max_replica_lag_seconds: Seconds(Duration::from_secs(10)),
            probe_interval: Seconds(Duration::from_millis(100)),
            probe_user: None,
            probe_database: "postgres".into(),
            read_your_writes: ReadYourWrites::Session,
            leader_wait_timeout: Seconds(Duration::from_secs(15)),
            read_only_suffix: "_ro".into(),
            read_only_aliases: BTreeMap::new(),
            zone: String::new(),
        }
    }
}

impl RoutingConfig {
    /// The real database behind `name` when `name` is a read-only alias.
    pub fn read_only_alias<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if let Some(real) = self.read_only_aliases.get(name) {
            return Some(real);
        }
        if self.read_only_suffix.is_empty() {
            return None;
        }
        name.strip_suffix(self.read_only_suffix.as_str())
            .filter(|real| !real.is_empty())
    }

    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        if self.probe_interval.0 < Duration::from_millis(10) {
            return Err((
                "routing.probe_interval".into(),
                "must be at least 10ms".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_aliases() {
        let mut r = RoutingConfig::default();
        assert_eq!(r.read_only_alias("app_ro"), Some("app"));
        assert_eq!(r.read_only_alias("app"), None);
        assert_eq!(r.read_only_alias("_ro"), None);
        r.read_only_aliases.insert("reports".into(), "app".into());
        assert_eq!(r.read_only_alias("reports"), Some("app"));
        r.read_only_suffix.clear();
        assert_eq!(r.read_only_alias("app_ro"), None);
    }
}
