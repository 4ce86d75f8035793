//! The SQL lexer, the recognition of session-state statements and the
//! read/write classification, with both settings of
//! standard_conforming_strings. Wherever the one-pass classifier reads a
//! text itself, it must agree with the token-based one, and call it free
//! of session effects exactly when the session-state scan finds none; a
//! text with a session effect must pass the cheap pre-check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsplit::route::classify::{Classifier, Summary};
use pgsplit::route::{lexer, quick, session};

fuzz_target!(|data: &[u8]| {
    let may = session::may_have_effects(data);
    if let Ok(text) = std::str::from_utf8(data) {
        for scs in [true, false] {
            for stmt in lexer::statements(text, scs) {
                for t in stmt {
                    let _ = t.text(text);
                }
            }
            let found = session::effects(text, scs);
            assert!(may || found.is_empty(), "pre-check missed {found:?} in {text:?}");
            let classifier = Classifier::new(["audit.log_event"]);
            if let Some(summary) = quick::single_statement(&classifier, data, scs) {
                assert_eq!(summary.effect_free, found.is_empty(), "effect_free for {text:?}");
                let summary = Summary {
                    effect_free: false,
                    ..summary
                };
                assert_eq!(summary, classifier.classify_tokens(text, scs), "{text:?}");
            }
        }
    } else {
        // Not UTF-8: the one-pass classifier may still read it (odd bytes
        // inside a literal), and must not panic.
        let classifier = Classifier::new(["audit.log_event"]);
        for scs in [true, false] {
            let _ = quick::single_statement(&classifier, data, scs);
            let _ = classifier.classify_bytes(data, scs);
        }
    }
});
