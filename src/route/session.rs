//! Statements that change session state, recognised from their text so
//! that transaction pooling can carry the state to the next server, or pin
//! the client to its server when the state cannot be carried.

use super::lexer::{statements, Kind, Token};
use super::word_starts::{any_word_start, is_word_byte};

/// Reported parameters: their changes arrive as ParameterStatus and are
/// followed from there (including the undo of a rollback).
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
];

/// Functions whose effect outlives the transaction and cannot be replayed.
const SESSION_FUNCTIONS: &[&str] = &[
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Whether a called name, as written (a quoted name keeps its quotes and
/// its case; a plain one matches in any case), is one of
/// `SESSION_FUNCTIONS`. The token-based scan and the one-pass
/// classifier both ask here, so they cannot disagree.
pub fn is_session_function(name: &[u8]) -> bool {
    match name.strip_prefix(b"\"").and_then(|n| n.strip_suffix(b"\"")) {
        Some(inner) => SESSION_FUNCTIONS.iter().any(|f| inner == f.as_bytes()),
        None => SESSION_FUNCTIONS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes())),
    }
}

/// One statement's effect on session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET [SESSION] name TO ...` of an unreported parameter: the SQL
    /// after TO/= , to be replayed as `SET name TO <sql>`.
    Set { name: String, sql: String },
    /// `RESET name` or `SET name TO DEFAULT` of an unreported parameter.
    Reset { name: String },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate { name: String },
    /// State pgsplit cannot carry: the client must keep its server.
    Pin(&'static str),
}

/// The session effects of every statement in `sql`, in order.
pub fn effects(sql: &str, standard_conforming_strings: bool) -> Vec<Effect> {
    let mut out = Vec::new();
    for stmt in statements(sql, standard_conforming_strings) {
        if let Some(e) = statement_effect(sql, &stmt) {
            out.push(e);
        }
    }
    out
}

/// The first letters of the words [`trigger_at`] looks for.
const TRIGGER_LETTERS: &[u8] = b"srtdpl";

/// A cheap pre-check: could `sql` have any session effect at all? Lets the
/// hot path skip the lexer for ordinary statements. One pass over the
/// word starts ([`any_word_start`], sixteen bytes at a time on x86_64);
/// only a word whose first letter begins a trigger word is looked at
/// further.
///
/// The word SET after another word (`UPDATE t SET`, `DO UPDATE SET`,
/// `ALTER ROLE r SET`) is not a trigger: only a statement that starts with
/// SET changes session state, and a statement's first word follows the
/// text's start, a `;`, a comment or a literal, never a word. (After a `"`
/// it still counts: that may open a quoted `"set"`, which the lexer reads
/// as a first word.)
/// A `--` comment could end in a word right before a statement's SET, so
/// once one is seen every SET counts again. Without this rule every UPDATE
/// went through the lexer (a quarter of pgsplit's instructions under
/// pgbench's TPC-B-like load).
pub fn may_have_effects(sql: &[u8]) -> bool {
    any_word_start(sql, TRIGGER_LETTERS, |at| trigger_at(sql, at))
}

/// Whether the word starting at `at` begins with a word that starts every
/// statement or call with a session effect: SET (also `set_config`; not
/// inside a statement), RESET, DISCARD, DEALLOCATE, PREPARE, LISTEN,
/// DECLARE, LOAD, TEMP (also TEMPORARY), `pg_advisory` and
/// `pg_try_advisory` (the advisory lock functions), `pg_temp` (the
/// schema of temporary tables). Its first two letters
/// pick the one or two words to compare, so nearly every word is ruled out
/// by one comparison (`pgbench_accounts` by its `b`).
fn trigger_at(sql: &[u8], at: usize) -> bool {
    let word = &sql[at..];
    let lower = |i: usize| word.get(i).map_or(0, u8::to_ascii_lowercase);
    let starts = |t: &[u8]| {
        word.get(..t.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(t))
    };
    match (lower(0), lower(1)) {
        (b's', b'e') => starts(b"set") && !set_inside_statement(sql, at),
        (b'r', b'e') => starts(b"reset"),
        (b't', b'e') => starts(b"temp"),
        (b'd', b'i') => starts(b"discard"),
        (b'd', b'e') => starts(b"deallocate") || starts(b"declare"),
        (b'p', b'r') => starts(b"prepare"),
        (b'p', b'g') => starts(b"pg_advisory") || starts(b"pg_try_advisory") || starts(b"pg_temp"),
        (b'l', b'i') => starts(b"listen"),
        (b'l', b'o') => starts(b"load"),
        _ => false,
    }
}

/// Whether the word SET at `at` is certainly not a statement's first word:
/// the whole word (not `set_config`), after a word, with no `--` comment
/// before it. Looked at only when SET is found, so the scan above stays
/// cheap.
fn set_inside_statement(sql: &[u8], at: usize) -> bool {
    let whole_word = sql.get(at + 3).is_none_or(|&c| !is_word_byte(c));
    let before = &sql[..at];
    let after_word = before
        .iter()
        .rev()
        .find(|c| !c.is_ascii_whitespace())
        .is_some_and(|&c| is_word_byte(c));
    // memchr for the `-`: building a substring finder costs more than
    // reading a statement's few dozen bytes, and a pairwise scan of them
    // cost some 100 instructions on every UPDATE.
    let comment = memchr::memchr_iter(b'-', before).any(|at| before.get(at + 1) == Some(&b'-'));
    whole_word && after_word && !comment
}

fn word(sql: &str, t: Option<&Token>) -> Option<String> {
    let t = t?;
    match t.kind {
        Kind::Word => Some(t.text(sql).to_ascii_lowercase()),
        Kind::QuotedIdent => {
            let text = t.text(sql);
            let inner = text.strip_prefix('"').unwrap_or(text);
            let inner = inner.strip_suffix('"').unwrap_or(inner);
            Some(inner.replace("\"\"", "\""))
        }
        _ => None,
    }
}

/// A possibly dotted parameter name starting at `tokens[i]`; returns it
/// and the index after it.
fn param_name(sql: &str, tokens: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = word(sql, tokens.get(i))?;
    i += 1;
    while tokens.get(i).is_some_and(|t| t.kind == Kind::Punct(b'.')) {
        name.push('.');
        name.push_str(&word(sql, tokens.get(i + 1))?);
        i += 2;
    }
    Some((name, i))
}

fn statement_effect(sql: &str, t: &[Token]) -> Option<Effect> {
    let first = word(sql, t.first())?;
    let kw = |i: usize, k: &str| t.get(i).is_some_and(|tok| tok.is_word(sql, k));
    match first.as_str() {
        "set" => {
            let mut i = 1;
            if kw(1, "local") {
                return None;
            }
            if kw(1, "session") {
                if kw(2, "authorization") || kw(2, "characteristics") {
                    return Some(Effect::Pin("SET SESSION AUTHORIZATION/CHARACTERISTICS"));
                }
                i = 2;
            }
            if kw(i, "role") {
                return Some(Effect::Pin("SET ROLE"));
            }
            if kw(i, "transaction") || kw(i, "constraints") {
                return None;
            }
            // SET TIME ZONE, SET NAMES: reported parameters.
            if (kw(i, "time") && kw(i + 1, "zone")) || kw(i, "names") {
                return None;
            }
            if kw(i, "schema") {
                let value = t.get(i + 1)?;
                return Some(Effect::Set {
                    name: "search_path".into(),
                    sql: sql[value.start..t.last()?.end].to_string(),
                });
            }
            let (name, j) = param_name(sql, t, i)?;
            if REPORTED.contains(&name.as_str()) {
                return None;
            }
            let sep = t.get(j)?;
            let is_sep =
                sep.is_word(sql, "to") || (sep.kind == Kind::Operator && sep.text(sql) == "=");
            if !is_sep {
                return Some(Effect::Pin("unrecognised SET"));
            }
            let value = t.get(j + 1)?;
            if t.len() == j + 2 && value.is_word(sql, "default") {
                return Some(Effect::Reset { name });
            }
            Some(Effect::Set {
                name,
                sql: sql[value.start..t.last()?.end].to_string(),
            })
        }
        "reset" => {
            if kw(1, "all") {
                return Some(Effect::ResetAll);
            }
            if kw(1, "role") || kw(1, "session") {
                return Some(Effect::Pin("RESET ROLE/SESSION AUTHORIZATION"));
            }
            let (name, _) = param_name(sql, t, 1)?;
            (!REPORTED.contains(&name.as_str())).then_some(Effect::Reset { name })
        }
        "discard" if kw(1, "all") => Some(Effect::DiscardAll),
        "discard" => None,
        "deallocate" => {
            let i = if kw(1, "prepare") { 2 } else { 1 };
            if kw(i, "all") {
                return Some(Effect::DeallocateAll);
            }
            let name = word(sql, t.get(i))?;
            Some(Effect::Deallocate { name })
        }
        "prepare" if !kw(1, "transaction") => Some(Effect::Pin("PREPARE")),
        "listen" => Some(Effect::Pin("LISTEN")),
        "load" => Some(Effect::Pin("LOAD")),
        "declare"
            if t.windows(2)
                .any(|w| w[0].is_word(sql, "with") && w[1].is_word(sql, "hold")) =>
        {
            Some(Effect::Pin("DECLARE ... WITH HOLD"))
        }
        "create"
            if (kw(1, "temp") || kw(1, "temporary"))
                || ((kw(1, "global") || kw(1, "local"))
                    && (kw(2, "temp") || kw(2, "temporary"))) =>
        {
            Some(Effect::Pin("CREATE TEMP"))
        }
        // `CREATE TABLE pg_temp.name` makes a temporary table too.
        "create" if (0..t.len()).any(|i| in_pg_temp(sql, t, i)) => {
            Some(Effect::Pin("CREATE in pg_temp"))
        }
        _ => session_function_call(sql, t).or_else(|| into_temporary_table(sql, t)),
    }
}

/// `INTO TEMP`, `INTO TEMPORARY` or `INTO [TABLE] pg_temp.` anywhere:
/// `SELECT ... INTO` makes a table, and a temporary one lives as long as
/// the session. (An INSERT into an existing temporary table pins too:
/// rare, and safe.)
fn into_temporary_table(sql: &str, t: &[Token]) -> Option<Effect> {
    let found = (0..t.len()).any(|i| {
        if !t[i].is_word(sql, "into") {
            return false;
        }
        let at = |j: usize, k: &str| t.get(j).is_some_and(|tok| tok.is_word(sql, k));
        if at(i + 1, "temp") || at(i + 1, "temporary") {
            return true;
        }
        let schema = if at(i + 1, "table") { i + 2 } else { i + 1 };
        in_pg_temp(sql, t, schema)
    });
    found.then_some(Effect::Pin("SELECT INTO a temporary table"))
}

/// Whether the tokens at `i` qualify a name with the schema of temporary
/// objects: `pg_temp.` (quoted or not).
fn in_pg_temp(sql: &str, t: &[Token], i: usize) -> bool {
    word(sql, t.get(i)).as_deref() == Some("pg_temp")
        && t.get(i + 1)
            .is_some_and(|tok| tok.kind == Kind::Punct(b'.'))
}

/// A call of a function whose effect outlives the transaction.
fn session_function_call(sql: &str, t: &[Token]) -> Option<Effect> {
    t.windows(2)
        .any(|w| w[1].kind == Kind::Punct(b'(') && is_session_function(w[0].text(sql).as_bytes()))
        .then_some(Effect::Pin("session-level function call"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(sql: &str) -> Vec<Effect> {
        effects(sql, true)
    }

    #[test]
    fn creating_in_pg_temp_pins() {
        for sql in [
            "CREATE TABLE pg_temp.x (a int)",
            "create unlogged table \"pg_temp\".y ()",
            "CREATE VIEW PG_TEMP.v AS SELECT 1",
        ] {
            assert_eq!(fx(sql), vec![Effect::Pin("CREATE in pg_temp")], "{sql}");
            assert!(may_have_effects(sql.as_bytes()), "{sql}");
        }
        for sql in ["CREATE TABLE x (a int)", "CREATE TABLE pg_temp (a int)"] {
            assert_eq!(fx(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn select_into_a_temporary_table_pins() {
        for sql in [
            "SELECT * INTO TEMP t FROM s",
            "select 1 into temporary table t",
            "SELECT 1 INTO TABLE pg_temp.t",
            "SELECT 1 INTO \"pg_temp\".t",
            "WITH a AS (SELECT 1) SELECT * INTO TEMP t FROM a",
        ] {
            assert_eq!(
                fx(sql),
                vec![Effect::Pin("SELECT INTO a temporary table")],
                "{sql}"
            );
            assert!(may_have_effects(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT * INTO t FROM s",
            "SELECT 1 INTO pg_temp",
            "SELECT temp FROM readings",
            "INSERT INTO temp_log VALUES (1)",
        ] {
            assert_eq!(fx(sql), vec![], "{sql}");
        }
    }

    #[test]
    fn set_and_reset_of_unreported_parameters() {
        assert_eq!(
            fx("SET search_path TO app, public"),
            vec![Effect::Set {
                name: "search_path".into(),
                sql: "app, public".into()
            }]
        );
        assert_eq!(
            fx("set SESSION statement_timeout = '5s'"),
            vec![Effect::Set {
                name: "statement_timeout".into(),
                sql: "'5s'".into()
            }]
        );
        assert_eq!(
            fx("SET my.custom = 1"),
            vec![Effect::Set {
                name: "my.custom".into(),
                sql: "1".into()
            }]
        );
        assert_eq!(
            fx("SET work_mem TO DEFAULT"),
            vec![Effect::Reset {
                name: "work_mem".into()
            }]
        );
        assert_eq!(
            fx("RESET search_path"),
            vec![Effect::Reset {
                name: "search_path".into()
            }]
        );
        assert_eq!(fx("RESET ALL"), vec![Effect::ResetAll]);
        assert_eq!(
            fx("SET SCHEMA 'x'"),
            vec![Effect::Set {
                name: "search_path".into(),
                sql: "'x'".into()
            }]
        );
    }

    #[test]
    fn reported_local_and_transaction_settings_are_not_effects() {
        assert!(fx("SET LOCAL search_path TO x").is_empty());
        assert!(fx("SET TimeZone = 'UTC'").is_empty());
        assert!(fx("SET TIME ZONE 'UTC'").is_empty());
        assert!(fx("SET application_name = 'x'").is_empty());
        assert!(fx("SET TRANSACTION READ ONLY").is_empty());
        assert!(fx("SELECT 1").is_empty());
    }

    #[test]
    fn jdbc_style_multi_statement() {
        assert_eq!(
            fx("BEGIN; SET extra_float_digits = 3; SELECT 'SET x = 1'"),
            vec![Effect::Set {
                name: "extra_float_digits".into(),
                sql: "3".into()
            }]
        );
    }

    #[test]
    fn discard_and_deallocate() {
        assert_eq!(fx("DISCARD ALL"), vec![Effect::DiscardAll]);
        assert_eq!(fx("DEALLOCATE ALL"), vec![Effect::DeallocateAll]);
        assert_eq!(fx("DEALLOCATE PREPARE ALL"), vec![Effect::DeallocateAll]);
        assert_eq!(
            fx("deallocate \"S_1\""),
            vec![Effect::Deallocate { name: "S_1".into() }]
        );
        assert!(fx("DISCARD PLANS").is_empty());
    }

    #[test]
    fn untrackable_state_pins() {
        for sql in [
            "PREPARE p AS SELECT 1",
            "LISTEN chan",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t(x int)",
            "CREATE GLOBAL TEMPORARY TABLE t(x int)",
            "SELECT set_config('search_path', 'x', false)",
            "SELECT pg_catalog.pg_advisory_lock(1)",
            "SET ROLE other",
            "SET SESSION AUTHORIZATION other",
        ] {
            assert!(matches!(fx(sql).as_slice(), [Effect::Pin(_)]), "{sql}");
        }
        assert!(fx("DECLARE c CURSOR FOR SELECT 1").is_empty());
        assert!(fx("SELECT pg_advisory_xact_lock(1)").is_empty());
        assert!(fx("SELECT 'set_config('").is_empty());
    }

    #[test]
    fn unterminated_quoted_names_with_multibyte_text() {
        // Found by the sql fuzz target: slicing inside a UTF-8 character.
        let _ = fx("SET \".\u{7b8}");
        let _ = fx("DEALLOCATE \"\u{7b8}");
        assert_eq!(
            fx("DEALLOCATE \"\u{e9}t\u{e9}\""),
            vec![Effect::Deallocate {
                name: "\u{e9}t\u{e9}".into()
            }]
        );
    }

    /// The words [`trigger_at`] must know, in any case, and words it must
    /// pass over (`select` shares its first letter with `set`).
    #[test]
    fn every_trigger_word_is_known_at_a_word_start() {
        let triggers: [&[u8]; 13] = [
            b"set",
            b"set_config",
            b"reset",
            b"discard",
            b"deallocate",
            b"prepare",
            b"listen",
            b"declare",
            b"temp",
            b"temporary",
            b"pg_advisory_lock",
            b"pg_try_advisory_lock",
            b"load",
        ];
        for t in triggers {
            let name = String::from_utf8_lossy(t);
            assert!(TRIGGER_LETTERS.contains(&t[0]), "{name}");
            assert!(trigger_at(t, 0), "{name}");
            assert!(trigger_at(&t.to_ascii_uppercase(), 0), "{name}");
            assert!(may_have_effects(&[b"x; ", t].concat()), "{name}");
        }
        for other in [
            &b"pgbench_accounts"[..],
            b"select",
            b"delete",
            b"delta",
            b"tid",
            b"table",
            b"abalance",
            b"st",
            b"s",
            b"pg",
        ] {
            let name = String::from_utf8_lossy(other);
            assert!(!trigger_at(other, 0), "{name}");
            assert!(!may_have_effects(other), "{name}");
        }
    }

    #[test]
    fn precheck_catches_candidates() {
        assert!(may_have_effects(b"SET x = 1"));
        assert!(may_have_effects(b"select set_config('a','b',false)"));
        assert!(!may_have_effects(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
    }

    #[test]
    fn precheck_skips_set_inside_a_statement() {
        for sql in [
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2",
            "ALTER ROLE app SET work_mem = '8MB'",
        ] {
            assert!(!may_have_effects(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "BEGIN; SET search_path = x",
            "UPDATE t SET a = 1; SET search_path = x",
            "/* pgsplit:leader */ SET search_path = x",
            "-- set the path\nSET search_path = x",
            "SELECT 1 - 2 -- two\nSET search_path = x",
            "UPDATE t SET a = set_config('x', 'y', false)",
            "UPDATE t SET a = 1 RETURNING pg_advisory_lock(1)",
            // Found by the sql fuzz target: a quoted "set" as first word.
            "\n\"set\"UUUU\u{5}",
        ] {
            assert!(may_have_effects(sql.as_bytes()), "{sql}");
        }
    }

    /// Whatever has an effect passes the pre-check: statements with every
    /// kind of effect, after every kind of text that can come before them.
    #[test]
    fn precheck_never_misses_an_effect() {
        let before = [
            "",
            "BEGIN; ",
            "UPDATE t SET a = 1;",
            "UPDATE t SET a = 1;\n",
            "-- note on the path\n",
            "/* x */",
            "SELECT 'x';",
            "SELECT \"x\";",
            "SELECT $$x$$;",
            "UPDATE \"T\" SET a = 1;",
        ];
        let statements = [
            "SET search_path = x",
            "set session my.guc to 1",
            "SET SCHEMA 'x'",
            "RESET work_mem",
            "RESET ALL",
            "DISCARD ALL",
            "DEALLOCATE p",
            "DEALLOCATE PREPARE ALL",
            "PREPARE p AS SELECT 1",
            "LISTEN ch",
            "LOAD 'auto_explain'",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t (a int)",
            "SELECT set_config('a', 'b', false)",
            "UPDATE t SET a = pg_advisory_lock(1)",
            "SET ROLE app",
            "\"set\" x",
        ];
        for b in before {
            for st in statements {
                let sql = format!("{b}{st}");
                if !effects(&sql, true).is_empty() {
                    assert!(may_have_effects(sql.as_bytes()), "{sql:?}");
                }
            }
        }
    }
}
