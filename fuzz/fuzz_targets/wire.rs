//! Every parser that reads bytes a client or server sent: the startup
//! packet, message framing, ErrorResponse fields, libpq options, and the
//! SCRAM messages. None may panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsplit::wire::{frame, messages, scram, startup};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = startup::packet_len(data) {
        if data.len() >= len {
            let _ = startup::parse(&data[..len]);
        }
    }
    let _ = startup::parse(data);
    let mut at = 0;
    while let Ok(Some(h)) = frame::peek_header(&data[at..], 1 << 20) {
        let end = (at + h.total_len).min(data.len());
        let _ = messages::parse_error_fields(&data[(at + frame::HEADER_LEN).min(end)..end]);
        at = end;
        if at >= data.len() {
            break;
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = startup::split_options(text);
    }
    let verifier = scram::Verifier::with_salt("pw", b"salt", 2);
    let (first, last) = data.split_at(data.len() / 2);
    if let Ok(exchange) = scram::Exchange::start(first, &verifier) {
        let _ = exchange.finish(last, &verifier);
    }
});
