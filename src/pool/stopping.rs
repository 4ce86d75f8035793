//! Whether a server is shutting down, asked the way a new client would.
//!
//! PostgreSQL ends a backend with the same FATAL (57P01, "terminating
//! connection due to administrator command") for two different things: a
//! fast shutdown of the whole server (what Patroni does to the old leader
//! in a switchover) and `pg_terminate_backend()` on that one backend. A
//! request cut off by the first should run on the new leader; one cut off
//! by the second was stopped on purpose and must fail as it would without
//! pgsplit. The postmaster refuses new connections with 57P03 ("the
//! database system is shutting down") before it signals any backend, so a
//! fresh startup packet tells the two apart. The answer comes before any
//! authentication (and before pg_hba.conf, so plaintext is enough even
//! where only TLS logins are allowed); the probe hangs up after the first
//! message, which PostgreSQL does not log.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::server::ServerSpec;
use crate::wire::frame::{peek_header, HEADER_LEN};
use crate::wire::messages::parse_error_fields;

/// How long the probe may take; past it the server counts as going away.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest first message read (an ErrorResponse is far smaller).
const MAX_ANSWER: usize = 8 * 1024;

/// Whether the server `spec` names refuses new connections because it is
/// shutting down, or cannot be reached at all.
pub async fn shutting_down(spec: &ServerSpec) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, first_answer(spec)).await {
        Ok(Ok(answer)) => refuses_as_shutting_down(&answer),
        Ok(Err(_)) | Err(_) => true,
    }
}

/// The first message the server sends after a startup packet.
async fn first_answer(spec: &ServerSpec) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(&*spec.addr).await?;
    tcp.write_all(&spec.startup_message()?).await?;
    let mut answer = vec![0u8; HEADER_LEN];
    tcp.read_exact(&mut answer).await?;
    let header = peek_header(&answer, MAX_ANSWER)
        .ok()
        .flatten()
        .ok_or_else(|| std::io::Error::other("invalid answer to a startup packet"))?;
    answer.resize(header.total_len, 0);
    tcp.read_exact(&mut answer[HEADER_LEN..]).await?;
    Ok(answer)
}

/// Whether a first answer is the ErrorResponse 57P03 "cannot connect now"
/// (shutting down; also starting up or in recovery, where no request can
/// run either).
fn refuses_as_shutting_down(answer: &[u8]) -> bool {
    answer.first() == Some(&b'E') && parse_error_fields(&answer[HEADER_LEN..]).code == "57P03"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::messages::ProxyError;

    #[test]
    fn only_57p03_counts_as_shutting_down() {
        let error = |code: &str| {
            ProxyError::fatal("57P01", "x")
                .with_code(code.to_string())
                .to_bytes()
                .to_vec()
        };
        assert!(refuses_as_shutting_down(&error("57P03")));
        assert!(!refuses_as_shutting_down(&error("28P01")));
        assert!(!refuses_as_shutting_down(&error("53300")));
        // An authentication request: the server is up.
        assert!(!refuses_as_shutting_down(b"R\0\0\0\x08\0\0\0\x05"));
    }

    #[tokio::test]
    async fn an_unreachable_server_counts_as_going_away() {
        // A port nothing listens on: bind one, then let it go.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let spec = ServerSpec {
            addr: addr.into(),
            user: "u".into(),
            database: "d".into(),
            password: "p".into(),
            connect_timeout: Duration::from_secs(1),
            tls: None,
        };
        assert!(shutting_down(&spec).await);
    }
}
