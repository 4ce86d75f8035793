//! The admin console: a client that logs in to database `pgsplit` (or
//! `pgbouncer`, for tools written for PgBouncer) as one of `admin_users`
//! gets PgBouncer's console commands instead of a server: SHOW POOLS,
//! CLIENTS, SERVERS, STATS, DATABASES, CONFIG, VERSION, LISTS, TOPOLOGY,
//! and PAUSE, RESUME, RELOAD, RECONNECT. Column names follow PgBouncer's
//! where one exists, so that exporters and habits carry over.
//!
//! Simple queries only (as PgBouncer's console); one command per query.
//! Session `SET`s of client parameters (DateStyle, client_encoding, ...)
//! that drivers send at connect are acknowledged and ignored.

use bytes::BytesMut;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::resultset::command_complete;
use super::show;
use crate::proxy::Shared;
use crate::stream::Stream;
use crate::wire::frame::{peek_header, read_cstr, HEADER_LEN};
use crate::wire::messages::{self, ProxyError};

/// Largest console message read.
const MAX_MESSAGE: usize = 64 * 1024;

/// A client that logged in to the console.
pub struct ConsoleClient {
    pub stream: Stream,
    /// Bytes the client sent after its startup.
    pub pending: BytesMut,
    pub peer: SocketAddr,
    pub user: String,
}

/// ParameterStatus values, BackendKeyData and ReadyForQuery after the
/// console's AuthenticationOk (what psycopg2 and psql look for).
pub fn greet(out: &mut BytesMut) {
    for (name, value) in [
        ("server_version", "15.0 (pgsplit console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgsplit"),
        ("is_superuser", "off"),
    ] {
        messages::parameter_status(out, name, value);
    }
    messages::backend_key_data(out, 0, 0);
    messages::ready_for_query(out, b'I');
}

/// Parameters a driver may SET at connect; acknowledged, not applied.
const CLIENT_SETTINGS: &[&str] = &[
    "datestyle",
    "client_encoding",
    "application_name",
    "extra_float_digits",
    "timezone",
    "intervalstyle",
    "search_path",
    "statement_timeout",
];

/// Serves console commands until the client leaves.
pub async fn run(mut client: ConsoleClient, shared: &Shared) {
    let mut input = std::mem::take(&mut client.pending);
    let mut out = BytesMut::new();
    let mut extended = false;
    loop {
        let header = match peek_header(&input, MAX_MESSAGE) {
            Ok(Some(h)) if input.len() >= h.total_len => h,
            Ok(_) => match client.stream.read_buf(&mut input).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(e) => {
                ProxyError::fatal("08P01", e.to_string()).encode(&mut out);
                let _ = client.stream.write_all(&out).await;
                break;
            }
        };
        let message = input.split_to(header.total_len);
        let body = &message[HEADER_LEN..];
        match header.tag {
            b'X' => break,
            b'Q' => {
                let text =
                    read_cstr(body).map_or("", |(t, _)| std::str::from_utf8(t).unwrap_or(""));
                match execute(text, shared).await {
                    Ok(answer) => out.extend_from_slice(&answer),
                    Err(e) => e.encode(&mut out),
                }
                messages::ready_for_query(&mut out, b'I');
            }
            b'S' => {
                if std::mem::take(&mut extended) {
                    ProxyError::error(
                        "0A000",
                        "the admin console takes simple queries only (psql -c 'SHOW POOLS')",
                    )
                    .encode(&mut out);
                }
                messages::ready_for_query(&mut out, b'I');
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F' => extended = true,
            other => {
                ProxyError::fatal("08P01", format!("invalid frontend message type {other}"))
                    .encode(&mut out);
                let _ = client.stream.write_all(&out).await;
                break;
            }
        }
        if !out.is_empty() && input.is_empty() {
            if client.stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    }
    let _ = client.stream.flush().await;
    tracing::info!(client = %client.peer, user = %client.user, "admin console closed");
}

/// The words of a command, lowercased, without a trailing semicolon.
fn words(text: &str) -> Vec<String> {
    text.trim()
        .trim_end_matches(';')
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

/// Runs one console command; the bytes of its answer (without the
/// ReadyForQuery).
async fn execute(text: &str, shared: &Shared) -> Result<BytesMut, ProxyError> {
    let words = words(text);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut out = BytesMut::new();
    match words.as_slice() {
        [] => out.extend_from_slice(b"I\0\0\0\x04"),
        ["show", what] => {
            let set = show::show(what, shared).ok_or_else(|| {
                ProxyError::error("42601", format!("unknown SHOW target \"{what}\"")).with_hint(
                    "try POOLS, CLIENTS, SERVERS, STATS, DATABASES, CONFIG, VERSION, LISTS or TOPOLOGY",
                )
            })?;
            set.encode(&mut out, "SHOW");
        }
        ["set", name, ..] if CLIENT_SETTINGS.contains(&name.split('=').next().unwrap_or("")) => {
            command_complete(&mut out, "SET")
        }
        ["pause"] => {
            pause(shared).await;
            command_complete(&mut out, "PAUSE");
        }
        ["resume"] => {
            shared.resume();
            tracing::info!("admin console: RESUME");
            command_complete(&mut out, "RESUME");
        }
        ["reconnect"] => {
            shared.pools.retire_all();
            tracing::info!(
                "admin console: RECONNECT (server connections replaced after their transactions)"
            );
            command_complete(&mut out, "RECONNECT");
        }
        ["reload"] => {
            crate::admin::reload::reload(shared)
                .await
                .map_err(|e| ProxyError::error("F0000", format!("config not reloaded: {e}")))?;
            command_complete(&mut out, "RELOAD");
        }
        _ => {
            return Err(ProxyError::error(
                "42601",
                format!("unknown admin console command: {}", text.trim()),
            )
            .with_hint("SHOW POOLS|CLIENTS|SERVERS|STATS|DATABASES|CONFIG|VERSION|LISTS|TOPOLOGY, PAUSE, RESUME, RELOAD, RECONNECT"));
        }
    }
    Ok(out)
}

/// PAUSE: new transactions wait; returns once none is running.
async fn pause(shared: &Shared) {
    shared.pause();
    tracing::info!("admin console: PAUSE (waiting for running transactions)");
    while shared
        .client_list
        .list()
        .iter()
        .any(|c| c.state() == crate::client::registry::ClientState::Active)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_words_without_the_semicolon() {
        assert_eq!(words("  SHOW pools; "), vec!["show", "pools"]);
        assert_eq!(words("set DateStyle='ISO'"), vec!["set", "datestyle='iso'"]);
    }
}
