//! The idle timeouts of one session: `client_idle_timeout` between
//! transactions (and for a pinned client), `idle_transaction_timeout`
//! inside one. The timer is not reset on every message: when it fires, the
//! session compares the time since the client last sent anything (or its
//! last request finished) with the limit that applies now, and re-arms.

use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

use crate::config::ProxyConfig;

/// Which limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleKind {
    /// Between transactions: 57P05.
    Session,
    /// Inside a transaction, waiting on the client: 25P03.
    InTransaction,
}

/// One session's idle timer and limits.
pub struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    session: Option<Duration>,
    in_transaction: Option<Duration>,
}

impl IdleTimer {
    /// A timer when at least one idle timeout is configured.
    pub fn new(p: &ProxyConfig) -> Option<IdleTimer> {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let session = nonzero(p.client_idle_timeout.0);
        let in_transaction = nonzero(p.idle_transaction_timeout.0);
        let first = session.into_iter().chain(in_transaction).min()?;
        Some(IdleTimer {
            sleep: Box::pin(tokio::time::sleep(first)),
            session,
            in_transaction,
        })
    }

    /// The limit for a session whose server reports `status` (None: no
    /// server held), that is `waiting_on_client` or busy, pinned or not.
    pub fn limit(
        &self,
        status: Option<u8>,
        waiting_on_client: bool,
        pinned: bool,
    ) -> Option<(Duration, IdleKind)> {
        match status {
            None => self.session.map(|d| (d, IdleKind::Session)),
            Some(b'T' | b'E') if waiting_on_client => {
                self.in_transaction.map(|d| (d, IdleKind::InTransaction))
            }
            Some(_) if waiting_on_client && pinned => self.session.map(|d| (d, IdleKind::Session)),
            Some(_) => None,
        }
    }

    /// The shortest configured limit, to re-check a busy session.
    pub fn shortest(&self) -> Duration {
        self.session
            .into_iter()
            .chain(self.in_transaction)
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Fires again after `after`.
    pub fn rearm(&mut self, after: Duration) {
        self.sleep.as_mut().reset(Instant::now() + after);
    }

    /// Ready once the timer fires.
    pub fn poll_elapsed(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::future::Future::poll(self.sleep.as_mut(), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(session_ms: u64, tx_ms: u64) -> ProxyConfig {
        let mut p = ProxyConfig::default();
        p.client_idle_timeout.0 = Duration::from_millis(session_ms);
        p.idle_transaction_timeout.0 = Duration::from_millis(tx_ms);
        p
    }

    #[tokio::test]
    async fn limits_by_state() {
        assert!(IdleTimer::new(&config(0, 0)).is_none());
        let t = IdleTimer::new(&config(700, 400)).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            t.limit(None, true, false),
            Some((ms(700), IdleKind::Session))
        );
        assert_eq!(
            t.limit(Some(b'T'), true, false),
            Some((ms(400), IdleKind::InTransaction))
        );
        assert_eq!(
            t.limit(Some(b'E'), true, false),
            Some((ms(400), IdleKind::InTransaction))
        );
        assert_eq!(
            t.limit(Some(b'T'), false, false),
            None,
            "a running query is not idle"
        );
        assert_eq!(
            t.limit(Some(b'I'), true, true),
            Some((ms(700), IdleKind::Session))
        );
        assert_eq!(t.shortest(), ms(400));
        let only_tx = IdleTimer::new(&config(0, 400)).unwrap();
        assert_eq!(only_tx.limit(None, true, false), None);
    }
}
