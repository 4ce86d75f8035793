//! Read/write classification of SQL text, for routing.
//!
//! A statement is [`Class::Read`] only when it is proven read-only:
//! it starts with SELECT, VALUES, TABLE, SHOW, WITH or EXPLAIN, and
//! nowhere in it is a word that writes (INSERT, UPDATE, DELETE, MERGE,
//! `SELECT ... INTO`, `FOR UPDATE/SHARE/NO KEY UPDATE/KEY SHARE`) or a call
//! of a function that writes (nextval, setval, set_config, txid_current,
//! pg_notify, advisory locks, `lo_*`, and the configured list). Everything
//! else is [`Class::Write`]: when in doubt, the leader. `EXPLAIN` of a
//! write is a write whether or not it says ANALYZE (conservative).
//!
//! One pass of the lexer over the text, no allocation. Strings, quoted
//! identifiers, comments and dollar quotes are understood by
//! [`super::lexer`], so a keyword inside a literal never counts.

use super::lexer::{Kind, Lexer, Token};

/// Where a hint or a decision sends work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Leader,
    Replica,
}

/// What one statement is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Proven read-only.
    Read,
    /// Anything not proven read-only.
    Write,
    /// BEGIN / START TRANSACTION.
    Begin { read_only: bool },
    /// `SET TRANSACTION ... READ ONLY`.
    SetTransactionReadOnly,
    /// SET / RESET of a session setting: changes no data (pgsplit carries
    /// it to every server the session uses), runs on the leader.
    Session,
    /// COMMIT, ROLLBACK, SAVEPOINT, ...: goes wherever its transaction is.
    TransactionControl,
}

impl Class {
    /// Fits in a transaction that only reads.
    pub fn reads_only(self) -> bool {
        !matches!(self, Class::Write)
    }
}

/// What a whole query string (one or more statements) asks for. The
/// default is what an empty string gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The first statement's class; `None` for an empty string.
    pub first: Option<Class>,
    /// The second statement's class, if any.
    pub second: Option<Class>,
    /// Every statement after the first fits a read-only transaction.
    pub rest_reads_only: bool,
    /// A leading `/* pgsplit:leader */` or `/* pgsplit:replica */`.
    pub hint: Option<Target>,
    /// Every statement is a proven read ([`Class::Read`]). Such text
    /// cannot change session state either (the functions that do are
    /// among those that make a statement a write), so the session-state
    /// scan can be skipped.
    pub only_reads: bool,
    /// Set by the one-pass classifier only: the text is one plain
    /// statement that calls none of the functions whose effect outlives
    /// the transaction and makes no temporary table, so the session-state
    /// scan can be skipped for a write too.
    pub effect_free: bool,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            first: None,
            second: None,
            rest_reads_only: true,
            hint: None,
            only_reads: true,
            effect_free: false,
        }
    }
}

impl Summary {
    /// A statement that must run on the leader (unreadable text, a
    /// function call message).
    pub fn leader() -> Summary {
        Summary {
            first: Some(Class::Write),
            only_reads: false,
            ..Summary::default()
        }
    }

    /// Whether the text certainly leaves session state alone: proven
    /// reads, or one plain statement with no session effect ([`Summary::effect_free`]).
    pub fn leaves_session_alone(&self) -> bool {
        self.only_reads || self.effect_free
    }

    /// Every statement fits a read-only transaction.
    pub fn reads_only(&self) -> bool {
        self.first.is_none_or(Class::reads_only) && self.rest_reads_only
    }
}

/// Classifies statements; holds the configured extra write functions.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// Lower-case names (last component) of functions that write.
    write_functions: Vec<String>,
}

/// Functions known to write or to take locks (exact names).
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "set_config",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "pg_logical_emit_message",
    "pg_switch_wal",
    "pg_create_restore_point",
    "dblink_exec",
];

/// Prefixes of function families that write or lock.
const WRITE_FUNCTION_PREFIXES: &[&str] = &["pg_advisory", "pg_try_advisory", "lo_"];

impl Classifier {
    /// A classifier that also treats `extra` functions as writes. Names may
    /// be schema-qualified; the last component is what is matched.
    pub fn new<S: AsRef<str>>(extra: impl IntoIterator<Item = S>) -> Classifier {
        Classifier {
            write_functions: extra
                .into_iter()
                .map(|s| {
                    let s = s.as_ref();
                    s.rsplit('.').next().unwrap_or(s).to_ascii_lowercase()
                })
                .collect(),
        }
    }

    /// Classifies every statement of `sql`: the common plain read in one
    /// pass over its bytes ([`super::quick`]), anything else token by token.
    pub fn classify(&self, sql: &str, standard_conforming_strings: bool) -> Summary {
        self.classify_bytes(sql.as_bytes(), standard_conforming_strings)
    }

    /// [`Classifier::classify`] of text as it came from a client: only
    /// the token way needs it to be UTF-8, and text that is not goes to
    /// the leader.
    pub fn classify_bytes(&self, sql: &[u8], standard_conforming_strings: bool) -> Summary {
        super::quick::single_statement(self, sql, standard_conforming_strings).unwrap_or_else(
            || {
                std::str::from_utf8(sql).map_or_else(
                    |_| Summary::leader(),
                    |sql| self.classify_tokens(sql, standard_conforming_strings),
                )
            },
        )
    }

    /// Classifies every statement of `sql` from its tokens: what
    /// [`Classifier::classify`] does for text the one-pass path gives up
    /// on. Public so that tests and the fuzz target can compare the two.
    pub fn classify_tokens(&self, sql: &str, standard_conforming_strings: bool) -> Summary {
        let mut summary = Summary {
            hint: leading_hint(sql),
            ..Summary::default()
        };
        let mut count = 0usize;
        let mut statement = StatementScan::default();
        let mut depth = 0usize;
        let mut finish = |statement: &mut StatementScan, summary: &mut Summary| {
            if let Some(class) = std::mem::take(statement).class() {
                match count {
                    0 => summary.first = Some(class),
                    1 => summary.second = Some(class),
                    _ => {}
                }
                if count > 0 && !class.reads_only() {
                    summary.rest_reads_only = false;
                }
                summary.only_reads &= class == Class::Read;
                count += 1;
            }
        };
        for token in Lexer::new(sql, standard_conforming_strings) {
            match token.kind {
                Kind::Punct(b'(') | Kind::Punct(b'[') => depth += 1,
                Kind::Punct(b')') | Kind::Punct(b']') => depth = depth.saturating_sub(1),
                Kind::Punct(b';') if depth == 0 => {
                    finish(&mut statement, &mut summary);
                    continue;
                }
                _ => {}
            }
            statement.token(self, sql, token);
        }
        finish(&mut statement, &mut summary);
        summary
    }

    /// Whether calling function `name` (last component) writes.
    pub(super) fn writes(&self, name: &str) -> bool {
        WRITE_FUNCTIONS.iter().any(|f| name.eq_ignore_ascii_case(f))
            || WRITE_FUNCTION_PREFIXES.iter().any(|p| {
                name.len() >= p.len()
                    && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            })
            || self
                .write_functions
                .iter()
                .any(|f| name.eq_ignore_ascii_case(f))
    }
}

/// What the first word of a statement makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Start {
    /// No token seen yet.
    #[default]
    Empty,
    /// A statement that may read only, unless a later token writes.
    MaybeRead,
    Begin,
    Set,
    Reset,
    TransactionControl,
    Other,
}

/// The state of one statement while its tokens go by.
#[derive(Debug, Default)]
struct StatementScan {
    start: Start,
    /// A token proved the statement writes.
    writes: bool,
    /// `READ` was the previous word (for READ ONLY).
    after_read: bool,
    read_only: bool,
    /// `SET TRANSACTION` / `SET SESSION CHARACTERISTICS`.
    set_transaction: bool,
    /// The previous token, for `FOR UPDATE` and `name(`.
    previous: Option<Token>,
    /// Tokens seen.
    count: usize,
}

impl StatementScan {
    fn token(&mut self, classifier: &Classifier, sql: &str, token: Token) {
        let previous = self.previous.replace(token);
        self.count += 1;
        if self.count == 1 {
            self.start = first_word(sql, &token);
            return;
        }
        match self.start {
            Start::MaybeRead => self.read_token(classifier, sql, previous, token),
            Start::Begin | Start::Set => {
                if self.start == Start::Set && self.count == 2 {
                    self.set_transaction = token.is_word(sql, "transaction");
                }
                if self.after_read && token.is_word(sql, "only") {
                    self.read_only = true;
                }
                self.after_read = token.is_word(sql, "read");
            }
            _ => {}
        }
    }

    fn read_token(
        &mut self,
        classifier: &Classifier,
        sql: &str,
        previous: Option<Token>,
        token: Token,
    ) {
        if self.writes {
            return;
        }
        match token.kind {
            Kind::Word => {
                // A write keyword anywhere, or a row lock.
                let after_for = previous.is_some_and(|p| p.is_word(sql, "for"));
                self.writes = super::quick::writes_word(token.text(sql).as_bytes(), after_for);
            }
            Kind::Punct(b'(') => {
                if let Some(p) = previous {
                    let name = match p.kind {
                        Kind::Word => Some(p.text(sql)),
                        Kind::QuotedIdent => Some(p.text(sql).trim_matches('"')),
                        _ => None,
                    };
                    if name.is_some_and(|n| classifier.writes(n)) {
                        self.writes = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn class(self) -> Option<Class> {
        Some(match self.start {
            Start::Empty => return None,
            Start::MaybeRead if !self.writes => Class::Read,
            Start::Begin => Class::Begin {
                read_only: self.read_only,
            },
            Start::Set if self.set_transaction && self.read_only => Class::SetTransactionReadOnly,
            Start::Set if !self.set_transaction => Class::Session,
            Start::Reset => Class::Session,
            Start::TransactionControl => Class::TransactionControl,
            _ => Class::Write,
        })
    }
}

fn first_word(sql: &str, token: &Token) -> Start {
    if token.kind != Kind::Word {
        // `(SELECT ...)` and the like: not worth proving.
        return Start::Other;
    }
    let word = token.text(sql);
    let is = |w: &str| word.eq_ignore_ascii_case(w);
    if is("select") || is("values") || is("table") || is("show") || is("with") || is("explain") {
        Start::MaybeRead
    } else if is("begin") || is("start") {
        Start::Begin
    } else if is("set") {
        Start::Set
    } else if is("reset") {
        Start::Reset
    } else if is("commit")
        || is("end")
        || is("rollback")
        || is("abort")
        || is("savepoint")
        || is("release")
    {
        Start::TransactionControl
    } else {
        Start::Other
    }
}

/// A routing hint in the comments before the first token.
fn leading_hint(sql: &str) -> Option<Target> {
    let mut rest = sql.trim_start();
    loop {
        let (comment, after) = if let Some(body) = rest.strip_prefix("/*") {
            let end = body.find("*/")?;
            (&body[..end], &body[end + 2..])
        } else if let Some(body) = rest.strip_prefix("--") {
            let end = body.find('\n').unwrap_or(body.len());
            (&body[..end], &body[end..])
        } else {
            return None;
        };
        let comment = comment.trim();
        if comment.eq_ignore_ascii_case("pgsplit:leader") {
            return Some(Target::Leader);
        }
        if comment.eq_ignore_ascii_case("pgsplit:replica") {
            return Some(Target::Replica);
        }
        rest = after.trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> Option<Class> {
        Classifier::new(["audit.log_event"])
            .classify(sql, true)
            .first
    }

    #[test]
    fn reads() {
        for sql in [
            "SELECT 1",
            "select abalance from pgbench_accounts where aid = $1",
            "VALUES (1), (2)",
            "TABLE t",
            "SHOW search_path",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "EXPLAIN SELECT * FROM t",
            "SELECT 'insert into x', \"update\" FROM t -- delete\n",
            "SELECT $$ nextval('s') $$, /* for update */ x FROM t",
            "SELECT substring(x FOR 3) FROM t",
            "SELECT lower(x), now() FROM t",
        ] {
            assert_eq!(class(sql), Some(Class::Read), "{sql}");
        }
    }

    #[test]
    fn writes() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET x = 1",
            "delete from t",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR KEY SHARE",
            "SELECT * INTO new_t FROM t",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "SELECT nextval('s')",
            "SELECT pg_catalog.setval('s', 1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_xact_lock(1)",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT txid_current()",
            "SELECT pg_notify('c', 'x')",
            "SELECT lo_create(0)",
            "SELECT audit.log_event('x')",
            "SELECT \"nextval\"('s')",
            "CREATE TABLE t (x int)",
            "COPY t FROM STDIN",
            "CALL p()",
            "LOCK TABLE t",
            "(SELECT 1)",
            "LISTEN c",
        ] {
            assert_eq!(class(sql), Some(Class::Write), "{sql}");
        }
    }

    #[test]
    fn transactions() {
        assert_eq!(class("BEGIN"), Some(Class::Begin { read_only: false }));
        assert_eq!(
            class("begin transaction isolation level repeatable read, read only"),
            Some(Class::Begin { read_only: true })
        );
        assert_eq!(
            class("START TRANSACTION READ ONLY"),
            Some(Class::Begin { read_only: true })
        );
        assert_eq!(
            class("BEGIN READ WRITE"),
            Some(Class::Begin { read_only: false })
        );
        assert_eq!(
            class("SET TRANSACTION READ ONLY"),
            Some(Class::SetTransactionReadOnly)
        );
        assert_eq!(class("SET TRANSACTION READ WRITE"), Some(Class::Write));
        assert_eq!(class("SET search_path = x"), Some(Class::Session));
        assert_eq!(class("reset all"), Some(Class::Session));
        assert_eq!(
            class("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            Some(Class::Session)
        );
        assert_eq!(class("COMMIT"), Some(Class::TransactionControl));
        assert_eq!(
            class("rollback to savepoint a"),
            Some(Class::TransactionControl)
        );
    }

    #[test]
    fn several_statements() {
        let c = Classifier::default();
        let s = c.classify("BEGIN; SELECT 1; COMMIT", true);
        assert_eq!(s.first, Some(Class::Begin { read_only: false }));
        assert_eq!(s.second, Some(Class::Read));
        assert!(s.rest_reads_only && s.reads_only());
        let s = c.classify("SELECT 1; INSERT INTO t VALUES (';')", true);
        assert!(!s.rest_reads_only && !s.reads_only());
        let s = c.classify("BEGIN; SET TRANSACTION READ ONLY; SELECT 1", true);
        assert_eq!(s.second, Some(Class::SetTransactionReadOnly));
        let s = c.classify("  ;; ", true);
        assert_eq!(s.first, None);
        assert!(s.reads_only());
    }

    #[test]
    fn standard_strings_off_changes_the_split() {
        let c = Classifier::default();
        // With backslash escapes the quote is escaped and the DELETE is
        // inside the literal; without them, it is a second statement.
        let sql = "SELECT 'a\\'; DELETE FROM t; --'";
        assert!(c.classify(sql, false).reads_only());
        assert!(!c.classify(sql, true).reads_only());
    }

    #[test]
    fn hints() {
        let c = Classifier::default();
        assert_eq!(
            c.classify("/* pgsplit:replica */ SELECT 1", true).hint,
            Some(Target::Replica)
        );
        assert_eq!(
            c.classify("-- app\n/*pgsplit:leader*/ SELECT 1", true).hint,
            Some(Target::Leader)
        );
        assert_eq!(
            c.classify("SELECT 1 /* pgsplit:replica */", true).hint,
            None
        );
        assert_eq!(c.classify("/* unterminated", true).hint, None);
    }
}
