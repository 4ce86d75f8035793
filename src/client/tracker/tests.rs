use super::*;

fn send(t: &mut Tracker, tags: &[u8]) {
    for &tag in tags {
        t.client_message(tag, b"S");
        assert_copy_ends_counted(t);
    }
}

/// The count of CopyEnd units that lets the tracker skip looking for them
/// agrees with the units.
fn assert_copy_ends_counted(t: &Tracker) {
    let counted = t.units.iter().filter(|u| **u == Unit::CopyEnd).count();
    assert_eq!(t.copy_ends, counted, "{:?}", t.units);
}

/// Feeds server messages; returns the ones the client sees, with made-up
/// answers emitted where they are due (as the session does).
fn recv(t: &mut Tracker, tags: &[u8]) -> String {
    let mut seen = String::new();
    let emit_due = |t: &mut Tracker, seen: &mut String| {
        while let Some(s) = t.take_due() {
            seen.push(match s {
                Synthetic::ParseComplete => '1',
                Synthetic::CloseComplete => '3',
                Synthetic::Error(_) => 'e',
                Synthetic::CommandAndReady(_) => 'z',
            });
        }
    };
    emit_due(t, &mut seen);
    for &tag in tags {
        if t.server_message(tag) == Verdict::Forward {
            seen.push(tag as char);
        }
        assert_copy_ends_counted(t);
        emit_due(t, &mut seen);
    }
    seen
}

#[test]
fn simple_query() {
    let mut t = Tracker::default();
    send(&mut t, b"Q");
    assert!(!t.is_idle());
    assert_eq!(recv(&mut t, b"TDCZ"), "TDCZ");
    assert!(t.is_idle());
}

#[test]
fn simple_query_error_is_part_of_the_answer() {
    let mut t = Tracker::default();
    send(&mut t, b"Q");
    assert_eq!(recv(&mut t, b"EZ"), "EZ");
    assert!(t.is_idle());
}

#[test]
fn pipeline_with_several_syncs() {
    let mut t = Tracker::default();
    send(&mut t, b"PBDESBES");
    recv(&mut t, b"12TDCZ");
    assert!(!t.is_idle());
    recv(&mut t, b"2DCZ");
    assert!(t.is_idle());
}

#[test]
fn flush_without_sync_keeps_server() {
    let mut t = Tracker::default();
    send(&mut t, b"PBEH");
    recv(&mut t, b"12DC");
    assert!(!t.is_idle());
    send(&mut t, b"S");
    recv(&mut t, b"Z");
    assert!(t.is_idle());
}

fn statement(body: &'static [u8]) -> Arc<Statement> {
    crate::client::statements::StatementRegistry::default()
        .intern(Bytes::from_static(body), Default::default)
}

#[test]
fn error_skips_to_sync_and_forgets_statements() {
    let mut t = Tracker::default();
    let (a, b) = (statement(b"a\0\0\0"), statement(b"b\0\0\0"));
    t.parse(true, Some(a.clone()));
    send(&mut t, b"BE");
    t.parse(true, Some(b.clone()));
    send(&mut t, b"BES");
    // The first Parse fails: everything up to Sync is skipped.
    assert_eq!(recv(&mut t, b"EZ"), "EZ");
    assert!(t.is_idle());
    assert_eq!(t.take_failed_statements(), vec![a.id, b.id]);
    assert!(!a.is_confirmed());
}

#[test]
fn made_up_answers_come_in_order() {
    let mut t = Tracker::default();
    send(&mut t, b"PBE");
    t.synthetic(Synthetic::ParseComplete);
    send(&mut t, b"BES");
    assert_eq!(recv(&mut t, b"12DC2DCZ"), "12DC12DCZ");
    assert!(t.is_idle());
}

#[test]
fn made_up_answer_with_nothing_owed_is_due_at_once() {
    let mut t = Tracker::default();
    t.synthetic(Synthetic::CloseComplete);
    assert_eq!(t.take_due(), Some(Synthetic::CloseComplete));
    assert_eq!(t.take_due(), None);
}

#[test]
fn made_up_answers_after_an_error_are_dropped() {
    let mut t = Tracker::default();
    send(&mut t, b"B");
    t.synthetic(Synthetic::ParseComplete);
    send(&mut t, b"ES");
    assert_eq!(recv(&mut t, b"EZ"), "EZ");
}

#[test]
fn slipped_in_messages_are_hidden() {
    let mut t = Tracker::default();
    let s = statement(b"s\0\0\0");
    t.close(false);
    t.parse(false, Some(s.clone()));
    send(&mut t, b"BES");
    assert_eq!(recv(&mut t, b"312DCZ"), "2DCZ");
    assert!(s.is_confirmed());
    assert!(t.is_idle());
}

#[test]
fn describe_statement_and_portal() {
    let mut t = Tracker::default();
    t.parse(true, None);
    t.describe(true);
    send(&mut t, b"B");
    t.describe(false);
    send(&mut t, b"ES");
    assert_eq!(recv(&mut t, b"1tT2TDCZ"), "1tT2TDCZ");
    assert!(t.is_idle());
}

#[test]
fn extended_copy_in_ignores_sync_sent_with_execute() {
    // tokio-postgres: Bind, Execute, Sync, then data, CopyDone, Sync.
    let mut t = Tracker::default();
    send(&mut t, b"BES");
    recv(&mut t, b"2G");
    send(&mut t, b"ddc");
    assert!(!t.is_idle());
    send(&mut t, b"S");
    recv(&mut t, b"CZ");
    assert!(t.is_idle());
}

#[test]
fn extended_copy_in_all_pipelined_before_server_answers() {
    let mut t = Tracker::default();
    send(&mut t, b"BESdcS");
    recv(&mut t, b"2GCZ");
    assert!(t.is_idle());
}

#[test]
fn simple_copy_in() {
    let mut t = Tracker::default();
    send(&mut t, b"Q");
    recv(&mut t, b"G");
    send(&mut t, b"ddc");
    recv(&mut t, b"CZ");
    assert!(t.is_idle());
}

#[test]
fn copy_in_error_leaves_copy_mode() {
    let mut t = Tracker::default();
    send(&mut t, b"Q");
    recv(&mut t, b"G");
    send(&mut t, b"d");
    recv(&mut t, b"EZ");
    send(&mut t, b"dc");
    assert!(t.is_idle(), "a stale CopyDone owes no ReadyForQuery");
    send(&mut t, b"Q");
    recv(&mut t, b"CZ");
    assert!(t.is_idle());
}

#[test]
fn a_stale_copy_done_before_a_pipeline_is_passed_over() {
    let mut t = Tracker::default();
    send(&mut t, b"Q");
    recv(&mut t, b"GEZ");
    // CopyDone after the copy failed: no command owns it.
    send(&mut t, b"cPBDES");
    assert!(!t.is_idle());
    assert_eq!(recv(&mut t, b"12TDCZ"), "12TDCZ");
    assert!(t.is_idle());
    assert_copy_ends_counted(&t);
}

#[test]
fn previous_sync_answered_before_copy() {
    let mut t = Tracker::default();
    send(&mut t, b"PBESBES");
    recv(&mut t, b"12CZ2G");
    send(&mut t, b"cS");
    recv(&mut t, b"CZ");
    assert!(t.is_idle());
}

#[test]
fn synthetic_encodings() {
    assert_eq!(&Synthetic::ParseComplete.encode(b'I')[..], b"1\0\0\0\x04");
    assert_eq!(
        &Synthetic::CommandAndReady("DEALLOCATE").encode(b'T')[..],
        b"C\0\0\0\x0fDEALLOCATE\0Z\0\0\0\x05T"
    );
}

#[test]
fn hidden_query_answer_is_dropped() {
    let mut t = Tracker::default();
    t.hidden_query();
    send(&mut t, b"Q");
    assert_eq!(recv(&mut t, b"CZ"), "", "the deferred BEGIN's answer");
    assert!(!t.is_idle());
    assert_eq!(recv(&mut t, b"TDCZ"), "TDCZ");
    assert!(t.is_idle());
}

#[test]
fn hidden_query_then_extended() {
    let mut t = Tracker::default();
    t.hidden_query();
    send(&mut t, b"PBES");
    assert_eq!(recv(&mut t, b"CZ12CZ"), "12CZ");
    assert!(t.is_idle());
}
