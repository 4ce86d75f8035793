//! One pass over the bytes for the statements applications send most: a
//! single SELECT / VALUES / TABLE / SHOW / WITH / EXPLAIN, or INSERT /
//! UPDATE / DELETE / MERGE (a write, whatever follows), or a bare BEGIN,
//! COMMIT, END, ROLLBACK or ABORT (every transaction's), made of words,
//! numbers, operators, `$n` parameters, plain string literals and quoted
//! names, with at most a trailing semicolon.
//!
//! It decides exactly as the token-based classifier
//! ([`super::classify::Classifier`]) would, without building tokens: for
//! pgbench's simple-protocol SELECT it costs about a third of the
//! instructions, and classification runs on every simple Query. Anything
//! else gives up (`None`) and goes the token way: comments (they may hold a
//! routing hint), dollar quotes, `E''` strings, strings when
//! standard_conforming_strings is off, non-ASCII text outside literals,
//! unterminated literals, several statements, and statements that start
//! otherwise.
//!
//! On the way it notes what in a statement of this shape changes session
//! state: a call of a function whose effect outlives the transaction
//! (`set_config`, the session advisory locks) and a temporary table made
//! by `SELECT ... INTO`. A statement without either skips the
//! session-state scan ([`Summary::effect_free`]), writes included.

use super::classify::{Class, Classifier, Summary};
use super::keyword::{key_at, key_of, keyword, Key};
use super::lexer::{class_of, skip_class, IDENT_CHAR, IDENT_START, NUMBER_CHAR, OPERATOR, SPACE};
use super::session::is_session_function;

const SELECT: Key = keyword(b"select");
const VALUES: Key = keyword(b"values");
const TABLE: Key = keyword(b"table");
const SHOW: Key = keyword(b"show");
const WITH: Key = keyword(b"with");
const EXPLAIN: Key = keyword(b"explain");
const INSERT: Key = keyword(b"insert");
const UPDATE: Key = keyword(b"update");
const DELETE: Key = keyword(b"delete");
const MERGE: Key = keyword(b"merge");
const BEGIN: Key = keyword(b"begin");
const COMMIT: Key = keyword(b"commit");
const END: Key = keyword(b"end");
const ROLLBACK: Key = keyword(b"rollback");
const ABORT: Key = keyword(b"abort");
const INTO: Key = keyword(b"into");
const FOR: Key = keyword(b"for");
const SHARE: Key = keyword(b"share");
const KEY: Key = keyword(b"key");
const NO: Key = keyword(b"no");
const TEMP: Key = keyword(b"temp");
/// The first eight bytes of TEMPORARY.
const TEMPORAR: Key = keyword(b"temporar");
const PG_TEMP: Key = keyword(b"pg_temp");

/// The summary of `src` when it is one statement of the plain shape this
/// module reads; `None` sends it to the token-based classifier. Works on
/// the bytes: text outside literals must be ASCII here, and what a literal
/// holds does not matter, so the text is never checked for UTF-8 as a
/// whole (the server rejects text that is not, wherever it goes; the
/// check cost about 100 instructions per pgbench statement). Words are
/// compared as [`Key`]s.
pub fn single_statement(
    classifier: &Classifier,
    src: &[u8],
    standard_conforming_strings: bool,
) -> Option<Summary> {
    let mut pos = skip_class(src, 0, SPACE);
    let first_end = word_end(src, pos)?;
    let first = key_at(src, pos, first_end);
    if let Some(class) = transaction_word(first, first_end - pos) {
        // The word alone, perhaps with a semicolon: `BEGIN READ ONLY` and
        // the like go the token way.
        let mut rest = skip_class(src, first_end, SPACE);
        if src.get(rest) == Some(&b';') {
            rest = skip_class(src, rest + 1, SPACE);
        }
        return (rest == src.len()).then_some(Summary {
            first: Some(class),
            only_reads: false,
            effect_free: true,
            ..Summary::default()
        });
    }
    // Read openers, then the openers of a statement that writes whatever
    // follows (TPC-B-like work is mostly these): the rest only has to be
    // shown to be one statement without comments.
    let mut writes = match first {
        SELECT | VALUES | TABLE | SHOW | WITH | EXPLAIN => false,
        INSERT | UPDATE | DELETE | MERGE => true,
        _ => return None,
    };
    // The previous token as the next one may need it: a name that a `(`
    // makes a function call, and whether it was the word FOR.
    let mut name = Some((pos, first_end));
    let mut after_for = false;
    // A call of a function whose effect outlives the transaction, or a
    // temporary table made by SELECT INTO.
    let mut session_effect = false;
    // How far `INTO [TABLE] pg_temp .` has come: 0 not begun, 1 after
    // INTO, 2 after INTO TABLE, 3 after the schema name.
    let mut into = 0u8;
    pos = first_end;
    loop {
        pos = skip_class(src, pos, SPACE);
        let Some(&c) = src.get(pos) else { break };
        let mut next_into = 0;
        let next = src.get(pos + 1).copied().unwrap_or(0);
        let (end, this_name, is_for) = if c >= 0x80 {
            return None;
        } else if class_of(c) & IDENT_START != 0 {
            let end = word_end(src, pos)?;
            let word = key_at(src, pos, end);
            writes = writes || writes_key(word, after_for);
            if word == INTO {
                next_into = 1;
            } else if into == 1 && (word == TEMP || is_temporary(src, pos, end, word)) {
                session_effect = true;
            } else if into == 1 && word == TABLE {
                next_into = 2;
            } else if (into == 1 || into == 2) && word == PG_TEMP {
                next_into = 3;
            }
            (end, Some((pos, end)), word == FOR)
        } else if c.is_ascii_digit() || (c == b'.' && next.is_ascii_digit()) {
            (skip_class(src, pos, NUMBER_CHAR), None, false)
        } else if c == b'\'' && standard_conforming_strings {
            (closing(src, pos, b'\'')?, None, false)
        } else if c == b'"' {
            let end = closing(src, pos, b'"')?;
            if (into == 1 || into == 2) && &src[pos + 1..end - 1] == b"pg_temp" {
                next_into = 3;
            }
            (end, Some((pos, end)), false)
        } else if c == b'$' && next.is_ascii_digit() {
            (
                pos + 1
                    + src[pos + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count(),
                None,
                false,
            )
        } else if class_of(c) & OPERATOR != 0 {
            (operator_end(src, pos)?, None, false)
        } else if c == b';' {
            // Only a trailing semicolon: more text is another statement.
            if skip_class(src, pos + 1, SPACE) != src.len() {
                return None;
            }
            break;
        } else if matches!(c, b'\'' | b'$') {
            return None;
        } else {
            session_effect |= c == b'.' && into == 3;
            if let (b'(', Some((s, e))) = (c, name) {
                let called = &src[s..e];
                session_effect |= is_session_function(called);
                if !writes {
                    let called = std::str::from_utf8(called).ok()?.trim_matches('"');
                    writes |= classifier.writes(called);
                }
            }
            (pos + 1, None, false)
        };
        pos = end;
        name = this_name;
        after_for = is_for;
        into = next_into;
    }
    let class = if writes { Class::Write } else { Class::Read };
    Some(Summary {
        first: Some(class),
        only_reads: !writes,
        effect_free: !session_effect,
        ..Summary::default()
    })
}

/// The class of a transaction-control word that makes a whole statement
/// on its own: BEGIN, and COMMIT, END, ROLLBACK, ABORT. `len` is the
/// word's length (ROLLBACK has eight bytes, all its key holds).
fn transaction_word(word: Key, len: usize) -> Option<Class> {
    match word {
        BEGIN => Some(Class::Begin { read_only: false }),
        COMMIT | END | ABORT => Some(Class::TransactionControl),
        ROLLBACK if len == 8 => Some(Class::TransactionControl),
        _ => None,
    }
}

/// Whether the word `src[start..end]`, whose key is `word`, is TEMPORARY.
fn is_temporary(src: &[u8], start: usize, end: usize, word: Key) -> bool {
    word == TEMPORAR && end - start == 9 && src.get(start + 8).map(|b| b | 0x20) == Some(b'y')
}

/// True for a word that makes a statement that started as a read write:
/// INSERT, UPDATE, DELETE, MERGE, INTO anywhere, and SHARE, KEY or NO right
/// after FOR (`FOR SHARE`, `FOR KEY SHARE`, `FOR NO KEY UPDATE`; `FOR
/// UPDATE` is caught by UPDATE).
pub fn writes_word(word: &[u8], after_for: bool) -> bool {
    writes_key(key_of(word), after_for)
}

/// [`writes_word`] for a word's key.
fn writes_key(word: Key, after_for: bool) -> bool {
    match word {
        INSERT | UPDATE | DELETE | MERGE | INTO => true,
        SHARE | KEY | NO => after_for,
        _ => false,
    }
}

/// The end of the unquoted word at `pos`; `None` when no word starts there
/// or it is the `E` of an `E'...'` string.
fn word_end(src: &[u8], pos: usize) -> Option<usize> {
    let c = *src.get(pos)?;
    if c >= 0x80 || class_of(c) & IDENT_START == 0 {
        return None;
    }
    if matches!(c, b'e' | b'E') && src.get(pos + 1) == Some(&b'\'') {
        return None;
    }
    Some(skip_class(src, pos, IDENT_CHAR))
}

/// The end of the literal opened by `quote` at `pos` (a doubled quote is
/// part of it); `None` when it does not end.
fn closing(src: &[u8], pos: usize, quote: u8) -> Option<usize> {
    let mut at = pos + 1;
    loop {
        at += src.get(at..)?.iter().position(|&b| b == quote)?;
        if src.get(at + 1) == Some(&quote) {
            at += 2;
        } else {
            return Some(at + 1);
        }
    }
}

/// The end of the operator at `pos`; `None` when a comment starts in it.
fn operator_end(src: &[u8], pos: usize) -> Option<usize> {
    let end = skip_class(src, pos, OPERATOR);
    let run = &src[pos..end];
    let comment = run.windows(2).any(|pair| pair == b"--" || pair == b"/*");
    if comment {
        return None;
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass reading of `sql` (`None`: it gave up) and the token
    /// way's. Where it reads a text, its `effect_free` must be exactly
    /// what the session-state scan finds; that fact is its own (the token
    /// way leaves it unset), so it is checked here and cleared.
    fn both(sql: &str, standard: bool) -> (Option<Summary>, Summary) {
        let c = Classifier::new(["audit.log_event"]);
        (
            read_here(&c, sql, standard),
            c.classify_tokens(sql, standard),
        )
    }

    fn read_here(c: &Classifier, sql: &str, standard: bool) -> Option<Summary> {
        let quick = single_statement(c, sql.as_bytes(), standard)?;
        let found = crate::route::session::effects(sql, standard);
        assert_eq!(quick.effect_free, found.is_empty(), "{sql:?}: {found:?}");
        Some(Summary {
            effect_free: false,
            ..quick
        })
    }

    #[test]
    fn bytes_that_are_not_utf8_are_read_inside_a_literal_only() {
        let c = Classifier::default();
        let inside = b"SELECT * FROM t WHERE name = '\xff\xfe'";
        assert_eq!(
            single_statement(&c, inside, true).map(|s| s.only_reads),
            Some(true)
        );
        assert_eq!(single_statement(&c, b"SELECT \xff FROM t", true), None);
        assert_eq!(
            single_statement(&c, b"SELECT \"\xff\"(1)", true),
            None,
            "a called name must be UTF-8"
        );
        assert!(
            !c.classify_bytes(b"SELECT \xff FROM t", true).only_reads,
            "the leader takes it"
        );
    }

    /// The texts this module must read itself, and agree on.
    const PLAIN: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "BEGIN;",
        "begin",
        "COMMIT",
        " END ; ",
        "rollback;",
        "Abort",
        "select abalance from pgbench_accounts where aid = $1",
        "  SELECT 1  ;  ",
        "VALUES (1), (2)",
        "TABLE t",
        "SHOW search_path",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "EXPLAIN SELECT * FROM t",
        "SELECT 'insert into x', \"update\" FROM t",
        "SELECT 'it''s', \"a\"\"b\" FROM t",
        "SELECT substring(x FOR 3) FROM t",
        "SELECT lower(x), now(), 1.5e3, .5, x::int, a<>b FROM t",
        "SELECT \"users\".\"id\" FROM \"users\" WHERE \"users\".\"org\" = $1 LIMIT $2",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR NO KEY UPDATE",
        "SELECT * FROM t FOR SHARE",
        "SELECT * FROM t FOR KEY SHARE",
        "SELECT * FROM t FOR (share)",
        "SELECT * INTO new_t FROM t",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
        "SELECT nextval('s')",
        "SELECT nextval ('s')",
        "SELECT pg_catalog.setval('s', 1)",
        "SELECT pg_try_advisory_xact_lock(1)",
        "SELECT audit.log_event('x')",
        "SELECT \"nextval\"('s')",
        "SELECT x FROM t WHERE y = 'a;b'",
        "SELECT a$1, b FROM t",
        "SELECT (1;",
        "select\tx\nfrom\rt",
        "SELECT 'é', \"ü\" FROM t",
        "INSERT INTO t VALUES (1)",
        "UPDATE pgbench_accounts SET abalance = abalance + -4380 WHERE aid = 775640;",
        "insert into pgbench_history (tid, bid, aid, delta, mtime) values (7, 1, 384, -2945, CURRENT_TIMESTAMP);",
        "DELETE FROM t WHERE x = 'a;b' RETURNING *",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v",
        "update t set v = nextval('s')",
        "UPDATE t SET v = set_config('a', 'b', false)",
        "SELECT pg_catalog.set_config('a', 'b', false)",
        "select PG_ADVISORY_LOCK (1)",
        "INSERT INTO t VALUES (\"SET_CONFIG\"(1), \"set_config\"(2))",
        "DELETE FROM t WHERE pg_try_advisory_lock_shared(id)",
        "SELECT * INTO TEMP t FROM s",
        "select 1 into temporary table t",
        "SELECT 1 INTO TABLE pg_temp.t",
        "SELECT 1 INTO \"pg_temp\".t",
        "SELECT 1 INTO pg_temp",
        "SELECT temp FROM readings",
    ];

    #[test]
    fn a_plain_statement_is_effect_free_unless_it_calls_a_session_function_or_makes_a_temporary_table(
    ) {
        let c = Classifier::default();
        let effect_free =
            |sql: &str| single_statement(&c, sql.as_bytes(), true).map(|s| s.effect_free);
        for sql in [
            "UPDATE pgbench_accounts SET abalance = abalance + -4380 WHERE aid = 775640;",
            "insert into pgbench_history (tid, mtime) values (7, CURRENT_TIMESTAMP);",
            "SELECT \"SET_CONFIG\"('a', 'b', false)",
            "SELECT 'set_config(1)' FROM t",
        ] {
            assert_eq!(effect_free(sql), Some(true), "{sql}");
        }
        for sql in [
            "UPDATE t SET v = set_config('a', 'b', false)",
            "SELECT x FROM t WHERE pg_advisory_lock(1) IS NOT NULL",
            "SELECT \"set_config\"('a', 'b', false)",
            "SELECT * INTO TEMP t FROM s",
            "SELECT 1 INTO pg_temp.t",
        ] {
            assert_eq!(effect_free(sql), Some(false), "{sql}");
        }
    }

    #[test]
    fn plain_text_is_read_here_and_agrees() {
        for sql in PLAIN {
            let (quick, tokens) = both(sql, true);
            assert_eq!(quick, Some(tokens), "{sql}");
        }
    }

    #[test]
    fn other_text_goes_the_token_way() {
        for (sql, standard) in [
            ("/* pgsplit:replica */ SELECT 1", true),
            ("SELECT 1 -- tail", true),
            ("SELECT 1 /* x */", true),
            ("SELECT 1 +-- x", true),
            ("SELECT $$a$$", true),
            ("SELECT $tag$a$tag$", true),
            ("SELECT E'a\\'b'", true),
            ("SELECT 'a'", false),
            ("SELECT 'unterminated", true),
            ("SELECT \"unterminated", true),
            ("SELECT é FROM t", true),
            ("SELECT 1; SELECT 2", true),
            ("SELECT 1; DELETE FROM t", true),
            ("BEGIN READ ONLY", true),
            ("BEGIN; SELECT 1", true),
            ("START TRANSACTION", true),
            ("COMMIT AND CHAIN", true),
            ("END;;", true),
            ("SAVEPOINT a", true),
            ("UPDATE t SET x = 1; SELECT 1", true),
            ("UPDATE t SET x = 1 -- set", true),
            ("/* pgsplit:replica */ DELETE FROM t", true),
            ("INSERT INTO t VALUES ($$a$$)", true),
            ("upsert t", true),
            ("(SELECT 1)", true),
            ("", true),
            ("   ", true),
            ("e'x'", true),
        ] {
            assert_eq!(both(sql, standard).0, None, "{sql}");
        }
    }

    /// Random texts from fragments that sit near every decision this
    /// module takes: wherever it reads a text itself, it must agree.
    #[test]
    fn agrees_with_the_tokens_on_generated_text() {
        const FRAGMENTS: &[&str] = &[
            "SELECT",
            "select",
            "VALUES",
            "with",
            "explain",
            " ",
            "\t",
            "\n",
            "x",
            "t.y",
            "(",
            ")",
            "[",
            "]",
            ",",
            ";",
            "'a'",
            "'it''s'",
            "'",
            "\"b\"",
            "\"q\"\"q\"",
            "\"",
            "for",
            "FOR",
            "share",
            "key",
            "no",
            "update",
            "into",
            "insert",
            "merge",
            "delete",
            "nextval",
            "\"nextval\"",
            "pg_advisory_lock",
            "set_config",
            "SET_CONFIG",
            "\"set_config\"",
            "pg_try_advisory_lock_shared",
            "temp",
            "TEMPORARY",
            "table",
            "pg_temp",
            "\"pg_temp\"",
            "pg_temp.t",
            "audit.log_event",
            "lo_",
            "$1",
            "$",
            "$$",
            "1",
            "1.5e3",
            ".",
            ".5",
            "=",
            "<>",
            "::",
            "-",
            "--",
            "/",
            "/*",
            "*/",
            "*",
            "e",
            "E'",
            "é",
            "a$b",
            "+-",
            "\\",
        ];
        let c = Classifier::new(["audit.log_event"]);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut count = 0;
        for _ in 0..20_000 {
            let mut sql = String::from(
                [
                    "SELECT ", "select", "WITH ", "x ", "UPDATE ", "insert", "BEGIN", "end",
                ][next(8)],
            );
            for _ in 0..next(12) {
                sql.push_str(FRAGMENTS[next(FRAGMENTS.len())]);
                if next(2) == 0 {
                    sql.push(' ');
                }
            }
            for standard in [true, false] {
                if let Some(quick) = read_here(&c, &sql, standard) {
                    count += 1;
                    assert_eq!(
                        quick,
                        c.classify_tokens(&sql, standard),
                        "{sql:?} {standard}"
                    );
                }
            }
        }
        // The generator must reach this module's own decisions often.
        assert!(count > 2_000, "only {count} texts read here");
    }

    #[test]
    fn write_words() {
        for w in ["insert", "UPDATE", "Delete", "merge", "INTO"] {
            assert!(writes_word(w.as_bytes(), false), "{w}");
        }
        for w in ["share", "KEY", "no"] {
            assert!(writes_word(w.as_bytes(), true), "{w}");
            assert!(!writes_word(w.as_bytes(), false), "{w}");
        }
        for w in ["select", "inserts", "upd", "for", "nothing"] {
            assert!(!writes_word(w.as_bytes(), true), "{w}");
        }
    }
}
