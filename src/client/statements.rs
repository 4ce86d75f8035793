//! Prepared statements in transaction mode.
//!
//! A statement's identity is its query text plus parameter types (the Parse
//! body after the name). Identical statements from any client share one
//! pooled statement with one server-side name (`pgsplit_<id>`); each client
//! maps its own names onto them. Each server connection remembers which
//! pooled statements it has prepared ([`crate::pool::server::Prepared`]),
//! so a Parse is sent only to a server that lacks the statement.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::route::classify::Summary;

/// Past this many entries the registry drops statements no client maps.
const REGISTRY_SWEEP_AT: usize = 10_000;

/// One pooled statement.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// The name it has on every server: `pgsplit_<id>`.
    pub server_name: String,
    /// The Parse body after the name: query, NUL, parameter types.
    pub body: Bytes,
    /// What its query is, for routing; decided once, at the first Parse.
    pub summary: Summary,
    /// A server has answered its Parse with ParseComplete: it is valid SQL
    /// with these parameter types.
    confirmed: AtomicBool,
}

impl Statement {
    /// Notes that a server parsed it successfully.
    pub fn confirm(&self) {
        self.confirmed.store(true, Ordering::Relaxed);
    }

    /// Whether a server ever parsed it successfully.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }
}

impl PartialEq for Statement {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Statement {}

/// Every pooled statement, by identity.
#[derive(Default)]
pub struct StatementRegistry {
    next_id: AtomicU64,
    by_body: Mutex<HashMap<Bytes, Arc<Statement>>>,
}

impl StatementRegistry {
    /// The pooled statement for a Parse body, created on first sight
    /// (`classify` runs then only).
    pub fn intern(&self, body: Bytes, classify: impl FnOnce() -> Summary) -> Arc<Statement> {
        let mut map = self.by_body.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = map.get(&body) {
            return s.clone();
        }
        if map.len() >= REGISTRY_SWEEP_AT {
            // Only the registry holds these: no client maps them any more.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let s = Arc::new(Statement {
            id,
            server_name: format!("pgsplit_{id}"),
            body: body.clone(),
            summary: classify(),
            confirmed: AtomicBool::new(false),
        });
        map.insert(body, s.clone());
        s
    }

    /// The pooled statement for a Parse body, if one exists.
    pub fn get(&self, body: &[u8]) -> Option<Arc<Statement>> {
        self.by_body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(body)
            .cloned()
    }

    /// Number of pooled statements (for tests and status).
    pub fn len(&self) -> usize {
        self.by_body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One client's statement names.
#[derive(Default)]
pub struct ClientStatements {
    named: HashMap<String, Arc<Statement>>,
    /// Body of the client's unnamed statement, and a sequence number that
    /// tells servers apart that hold an older one.
    unnamed: Option<(Bytes, u64)>,
    unnamed_seq: u64,
}

impl ClientStatements {
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.named.get(name)
    }

    /// Adds a name; false if the client already has it (PostgreSQL's 42P05).
    pub fn insert(&mut self, name: &str, s: Arc<Statement>) -> bool {
        if self.named.contains_key(name) {
            return false;
        }
        self.named.insert(name.to_string(), s);
        true
    }

    /// Forgets a name; true if it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.named.remove(name).is_some()
    }

    /// DEALLOCATE ALL / DISCARD ALL.
    pub fn clear(&mut self) {
        self.named.clear();
        self.unnamed = None;
    }

    /// The client parsed a new unnamed statement; returns its sequence.
    pub fn set_unnamed(&mut self, body: Bytes) -> u64 {
        self.unnamed_seq += 1;
        self.unnamed = Some((body, self.unnamed_seq));
        self.unnamed_seq
    }

    /// A simple Query destroys the unnamed statement.
    pub fn drop_unnamed(&mut self) {
        self.unnamed = None;
    }

    /// The client's unnamed statement, if it has one.
    pub fn unnamed(&self) -> Option<&(Bytes, u64)> {
        self.unnamed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_statements_share_one_pooled_statement() {
        let reg = StatementRegistry::default();
        let a = reg.intern(Bytes::from_static(b"SELECT 1\0\0\0"), Default::default);
        let b = reg.intern(Bytes::from_static(b"SELECT 1\0\0\0"), Default::default);
        let c = reg.intern(
            Bytes::from_static(b"SELECT 1\0\0\x01\0\0\0\x17"),
            Default::default,
        );
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id, "parameter types are part of the identity");
        assert_eq!(a.server_name, format!("pgsplit_{}", a.id));
    }

    #[test]
    fn client_names_map_and_collide_like_postgres() {
        let reg = StatementRegistry::default();
        let mut c = ClientStatements::default();
        let s = reg.intern(Bytes::from_static(b"SELECT 1\0\0\0"), Default::default);
        assert!(c.insert("s1", s.clone()));
        assert!(!c.insert("s1", s.clone()));
        assert_eq!(c.get("s1").unwrap().id, s.id);
        assert!(c.remove("s1"));
        assert!(!c.remove("s1"));
        let seq = c.set_unnamed(Bytes::from_static(b"x"));
        assert_eq!(c.unnamed().unwrap().1, seq);
        c.drop_unnamed();
        assert!(c.unnamed().is_none());
    }
}
