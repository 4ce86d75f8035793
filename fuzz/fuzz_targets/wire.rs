//! Every parser that reads bytes a client or server sent: the startup
//! packet, message framing, ErrorResponse fields, libpq options, and the
//! SCRAM messages of both sides of an exchange. None may panic on any
//! input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgsplit::wire::{frame, messages, scram, scram_client, startup};

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
    // A server's SCRAM answers to pgsplit's login: the input follows a
    // nonce that extends pgsplit's, so parsing gets past the nonce check.
    let mut login = scram_client::Login::new();
    let client_first = String::from_utf8_lossy(login.client_first()).into_owned();
    if let Some((_, nonce)) = client_first.split_once(",r=") {
        let mut server_first = format!("r={nonce}").into_bytes();
        server_first.extend_from_slice(first);
        if let Ok(salt) = login.server_first(&server_first) {
            if salt.iterations <= 16 {
                let keys = scram_client::Keys::derive("pw", &salt);
                if login.client_final(&keys).is_ok() {
                    let _ = login.server_final(last);
                }
            }
        }
    }
});
