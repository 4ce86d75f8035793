//! Why a client connection ended: one typed reason that feeds the close
//! log line now and the close counters of the metrics later.

/// Why a session ended; logged now, counted by metrics later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent Terminate.
    ClientTerminate,
    /// The client closed its socket.
    ClientClosed,
    /// Reading from or writing to the client failed.
    ClientIo,
    /// The server connection failed or closed mid-use.
    ServerLost,
    /// The client broke the protocol (bad length, unknown message type,
    /// message above max_message_size).
    ProtocolViolation,
    /// No server connection could be had (wait timeout, connect failure).
    NoServer,
    /// Idle between transactions longer than client_idle_timeout.
    ClientIdleTimeout,
    /// Idle inside a transaction longer than idle_transaction_timeout.
    IdleInTransactionTimeout,
    /// Login not finished within client_login_timeout.
    LoginTimeout,
    /// Refused at login: max_client_connections reached.
    TooManyClients,
    /// Refused at login: wrong password, unknown user, TLS required.
    AuthFailed,
    /// Refused at login for another reason (protocol, database, server).
    LoginRefused,
    /// pgsplit is shutting down (told with 57P01 once idle).
    Shutdown,
}

impl CloseReason {
    /// The reason for a login refused with `sqlstate`; `timed_out` when
    /// the login deadline had passed.
    pub fn for_login(sqlstate: &str, timed_out: bool) -> CloseReason {
        match sqlstate {
            _ if timed_out => CloseReason::LoginTimeout,
            "53300" => CloseReason::TooManyClients,
            "28P01" | "28000" => CloseReason::AuthFailed,
            "08P01" => CloseReason::ProtocolViolation,
            _ => CloseReason::LoginRefused,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientTerminate => "client_terminate",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ClientIo => "client_io_error",
            CloseReason::ServerLost => "server_lost",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::NoServer => "no_server",
            CloseReason::ClientIdleTimeout => "client_idle_timeout",
            CloseReason::IdleInTransactionTimeout => "idle_transaction_timeout",
            CloseReason::LoginTimeout => "login_timeout",
            CloseReason::TooManyClients => "too_many_clients",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::LoginRefused => "login_refused",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_distinct_names() {
        let all = [
            CloseReason::ClientTerminate,
            CloseReason::ClientClosed,
            CloseReason::ClientIo,
            CloseReason::ServerLost,
            CloseReason::ProtocolViolation,
            CloseReason::NoServer,
            CloseReason::ClientIdleTimeout,
            CloseReason::IdleInTransactionTimeout,
            CloseReason::LoginTimeout,
            CloseReason::TooManyClients,
            CloseReason::AuthFailed,
            CloseReason::LoginRefused,
            CloseReason::Shutdown,
        ];
        let mut names: Vec<&str> = all.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn login_refusals_by_sqlstate() {
        assert_eq!(
            CloseReason::for_login("08P01", true),
            CloseReason::LoginTimeout
        );
        assert_eq!(
            CloseReason::for_login("53300", false),
            CloseReason::TooManyClients
        );
        assert_eq!(
            CloseReason::for_login("28P01", false),
            CloseReason::AuthFailed
        );
        assert_eq!(
            CloseReason::for_login("3D000", false),
            CloseReason::LoginRefused
        );
    }
}
