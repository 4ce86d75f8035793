//! The SQL lexer and the recognition of session-state statements, with
//! both settings of standard_conforming_strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsplit::route::{lexer, session};

fuzz_target!(|data: &[u8]| {
    let _ = session::may_have_effects(data);
    if let Ok(text) = std::str::from_utf8(data) {
        for scs in [true, false] {
            for stmt in lexer::statements(text, scs) {
                for t in stmt {
                    let _ = t.text(text);
                }
            }
            let _ = session::effects(text, scs);
        }
    }
});
