//! Prepared statements in transaction mode.
//!
//! A statement's identity is its query text plus parameter types (the Parse
//! body after the name). Identical statements from any client share one
//! pooled statement with one server-side name (`pgsplit_<id>`); each client
//! maps its own names onto them. Each server connection remembers which
//! pooled statements it has prepared ([`crate::pool::server::Prepared`]),
//! so a Parse is sent only to a server that lacks the statement.

use crate::fasthash::FastMap;
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

/// What a classification depended on besides the text: the classifier in
/// force (its epoch) and the session's `standard_conforming_strings`.
pub type ClassifyKey = (u64, bool);

/// One client's statement names.
#[derive(Default)]
pub struct ClientStatements {
    named: FastMap<String, Arc<Statement>>,
    /// Body of the client's unnamed statement, and a sequence number that
    /// tells servers apart that hold an older one.
    unnamed: Option<(Bytes, u64)>,
    unnamed_seq: u64,
    /// The last unnamed Parse body and its classification. Drivers that
    /// do not name statements (libpq's PQexecParams, pgbench -M extended,
    /// JDBC below its prepare threshold) send the same text again and
    /// again; a comparison then replaces a classification. Survives a
    /// simple Query, which only destroys the statement itself.
    /// Boxed: most clients never send an unnamed Parse, and every idle
    /// client would carry the room.
    recent: Option<Box<(Bytes, Summary, ClassifyKey)>>,
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

    /// The classification of the last unnamed Parse when `body` is that
    /// Parse's body again, classified under the same `key`.
    pub fn recent_summary(&self, body: &[u8], key: ClassifyKey) -> Option<Summary> {
        match self.recent.as_deref() {
            Some((b, summary, k)) if *k == key && b[..] == *body => Some(*summary),
            _ => None,
        }
    }

    /// The client parsed a new unnamed statement with `body`; returns its
    /// sequence and what its text is: the kept classification when the
    /// body is the last one's again under the same `key`, else
    /// `classify()`. The body is copied once per distinct text, so it does
    /// not hold the client's read buffer.
    pub fn set_unnamed(
        &mut self,
        body: &[u8],
        key: ClassifyKey,
        classify: impl FnOnce() -> Summary,
    ) -> (u64, Summary) {
        let (body, summary) = match self.recent.as_deref() {
            Some((b, summary, k)) if b[..] == *body => {
                (b.clone(), if *k == key { *summary } else { classify() })
            }
            _ => (Bytes::copy_from_slice(body), classify()),
        };
        match self.recent.as_deref_mut() {
            Some(recent) => *recent = (body.clone(), summary, key),
            None => self.recent = Some(Box::new((body.clone(), summary, key))),
        }
        self.unnamed_seq += 1;
        self.unnamed = Some((body, self.unnamed_seq));
        (self.unnamed_seq, summary)
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
        let (seq, _) = c.set_unnamed(b"x", (0, true), Summary::default);
        assert_eq!(c.unnamed().unwrap().1, seq);
        c.drop_unnamed();
        assert!(c.unnamed().is_none());
    }

    #[test]
    fn recent_unnamed_text_keeps_its_classification() {
        let mut c = ClientStatements::default();
        let write = Summary::leader();
        assert_eq!(c.recent_summary(b"INSERT\0\0\0", (0, true)), None);
        c.set_unnamed(b"INSERT\0\0\0", (0, true), || write);
        c.drop_unnamed();
        assert_eq!(c.recent_summary(b"INSERT\0\0\0", (0, true)), Some(write));
        assert_eq!(
            c.recent_summary(b"INSERT\0\0\0", (1, true)),
            None,
            "a reload's classifier"
        );
        assert_eq!(
            c.recent_summary(b"INSERT\0\0\0", (0, false)),
            None,
            "other string rules"
        );
        assert_eq!(c.recent_summary(b"SELECT\0\0\0", (0, true)), None);
        let (first, _) = c.set_unnamed(b"INSERT\0\0\0", (0, true), || write);
        let (second, kept) = c.set_unnamed(b"INSERT\0\0\0", (0, true), || {
            panic!("the same text under the same key is not classified again")
        });
        assert_ne!(first, second, "each Parse is a new unnamed statement");
        assert_eq!(kept, write);
        let (_, fresh) = c.set_unnamed(b"INSERT\0\0\0", (1, true), Summary::default);
        assert_eq!(fresh, Summary::default(), "a new key classifies again");
    }
}
