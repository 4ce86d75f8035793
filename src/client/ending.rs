//! How a session ends: the idle timers (57P05 idle session, 25P03 idle
//! in transaction), the last error a leaving client is sent, whether the
//! client can be let go at shutdown without losing anything, and what
//! becomes of its server (back to the pool only when idle and in sync,
//! after the reset query in session mode; closed otherwise).

use std::time::Duration;

use super::idle::IdleKind;
use super::session::{CloseReason, Session};
use crate::config::PoolMode;
use crate::pool::pools::{discard, PooledServer};
use crate::wire::messages::ProxyError;

/// How long a last error message may take to reach a leaving client.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the reset query may take before the server is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

impl Session<'_> {
    /// Nothing in flight and no transaction open: the client can be told
    /// to go without losing anything.
    pub(super) fn idle_for_shutdown(&mut self) -> bool {
        let status = self.server.as_ref().map_or(b'I', |s| s.status);
        status == b'I'
            && self.client_in.is_empty()
            && self.to_server.is_empty()
            && self.tracker.is_idle()
            && !self.routing.blocked
    }

    /// The idle timer fired: disconnect the client if it has been idle
    /// longer than the limit for its state, else re-arm.
    pub(super) async fn check_idle(&mut self) -> Option<CloseReason> {
        let waiting_on_client = self.to_server.is_empty() && self.tracker.is_idle();
        let status = self.server.as_ref().map(|s| s.status);
        let pinned = self.pinned;
        let timer = self.idle.as_mut()?;
        let limit = timer.limit(status, waiting_on_client, pinned);
        let idle_for = self.last_activity.elapsed();
        match limit {
            Some((d, kind)) if idle_for >= d => {
                let (reason, error) = match kind {
                    IdleKind::Session => (
                        CloseReason::ClientIdleTimeout,
                        ProxyError::fatal("57P05", "terminating connection due to idle-session timeout (client_idle_timeout)"),
                    ),
                    IdleKind::InTransaction => (
                        CloseReason::IdleInTransactionTimeout,
                        ProxyError::fatal(
                            "25P03",
                            "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
                        ),
                    ),
                };
                self.farewell(error).await;
                Some(reason)
            }
            Some((d, _)) => {
                timer.rearm(d - idle_for);
                None
            }
            None => {
                timer.rearm(timer.shortest());
                None
            }
        }
    }

    /// Sends a last error, with whatever was queued before it. Rare, so
    /// its future is boxed rather than carried in every client's task.
    pub(super) async fn farewell(&mut self, error: ProxyError) {
        Box::pin(self.farewell_inner(error)).await
    }

    async fn farewell_inner(&mut self, error: ProxyError) {
        self.shared.metrics.error_sent(&error.code);
        self.to_client.push(error.to_bytes());
        let _ = tokio::time::timeout(
            FAREWELL_TIMEOUT,
            self.to_client.write_all(&mut self.client_wr),
        )
        .await;
    }

    /// Returns the held server to the pool only if it is idle and in sync
    /// (after the reset query in session mode); closes it otherwise.
    pub(super) async fn finish(&mut self, reason: CloseReason) {
        if reason == CloseReason::ClientTerminate {
            let _ = tokio::time::timeout(
                FAREWELL_TIMEOUT,
                self.to_client.write_all(&mut self.client_wr),
            )
            .await;
        }
        if let Some((parked, _)) = self.routing.parked.take() {
            // Parked only when idle and in sync.
            self.give_back_session_server(parked).await;
        }
        let Some(server) = self.server.take() else {
            return;
        };
        let cancelled = self.login.cancel.release().await;
        let in_sync = !cancelled
            && server.is_clean()
            && self.tracker.is_idle()
            && self.to_server.is_empty()
            && self.server_passthrough == 0;
        if !in_sync {
            tracing::debug!(server = %server.addr, "closing a server the client left mid-transaction");
            discard(server);
            return;
        }
        self.give_back_session_server(server).await;
    }

    /// Session mode runs the reset query before the server goes back;
    /// a server that fails it is closed.
    async fn give_back_session_server(&self, mut server: PooledServer) {
        if self.mode == PoolMode::Session {
            let query = &self.shared.config().proxy.server_reset_query;
            if !query.is_empty() {
                let reset = tokio::time::timeout(RESET_TIMEOUT, server.reset(query)).await;
                if !matches!(reset, Ok(Ok(()))) {
                    discard(server);
                }
            }
        }
    }
}
