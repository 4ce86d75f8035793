//! The response tracker under any interleaving of client and server
//! messages and made-up answers: it may be confused by nonsense, but must
//! not panic or grow without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsplit::client::tracker::{Synthetic, Tracker};

fuzz_target!(|data: &[u8]| {
    let mut t = Tracker::default();
    for pair in data.chunks(2) {
        let (op, tag) = (pair[0], *pair.get(1).unwrap_or(&b'S'));
        match op % 6 {
            0 => t.client_message(tag, &[tag]),
            1 => {
                let _ = t.server_message(tag);
            }
            2 => t.synthetic(Synthetic::ParseComplete),
            3 => t.parse(tag % 2 == 0, None),
            4 => {
                while t.take_due().is_some() {}
            }
            _ => {
                let _ = t.is_idle();
                let _ = t.take_failed_statements();
            }
        }
    }
});
