//! Live facts about members that change between topology snapshots:
//! health, WAL positions and lag (written by the probes), and how many
//! server connections are lent (written by the pools). Atomics, so that
//! routing reads them without a lock on the hot path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Leader WAL samples kept for read-your-writes (at the default probe
/// interval, about 25 s of history).
const LEADER_SAMPLES: usize = 256;

/// Nanoseconds of the monotonic clock (`CLOCK_MONOTONIC`, the one
/// `Instant` reads): fits an atomic, and a difference of two is a plain
/// subtraction (the hot path times every request with it; `Instant`
/// arithmetic cost some 120 instructions per transaction). Never 0, so
/// that 0 can mean "never".
pub fn now_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
        .max(1)
}

/// Seconds from `start` to `now`, both [`now_nanos`]; 0 when `start` is
/// 0 (never marked) or after `now`.
pub fn seconds_since(start: u64, now: u64) -> f64 {
    if start == 0 {
        return 0.0;
    }
    now.saturating_sub(start) as f64 / 1e9
}

/// One member's live state.
#[derive(Debug, Default)]
pub struct MemberState {
    /// The last probe succeeded.
    healthy: AtomicBool,
    /// A probe has succeeded at least once.
    probed: AtomicBool,
    /// Replicas: WAL replayed; leader: WAL written (as a byte position).
    wal_lsn: AtomicU64,
    lag_bytes: AtomicU64,
    lag_millis: AtomicU64,
    /// Server connections to this member lent to clients right now.
    outstanding: AtomicUsize,
    /// What the member last said of itself: 0 unknown, 1 primary, 2 in
    /// recovery.
    recovery: AtomicU8,
    /// Probes failed in a row.
    failures: AtomicU32,
}

/// What a member last said of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Unknown,
    /// Not in recovery: it takes writes.
    Primary,
    InRecovery,
}

impl MemberState {
    /// A probe (or a new server connection) saw whether the member is in
    /// recovery.
    pub fn observed(&self, in_recovery: bool) {
        self.recovery
            .store(if in_recovery { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// What the member last said of itself; `Unknown` after two failed
    /// probes in a row (one miss is forgiven, so a slow probe does not
    /// stop writes).
    pub fn observed_role(&self) -> Observed {
        if self.failures.load(Ordering::Relaxed) >= 2 {
            return Observed::Unknown;
        }
        match self.recovery.load(Ordering::Relaxed) {
            1 => Observed::Primary,
            2 => Observed::InRecovery,
            _ => Observed::Unknown,
        }
    }

    /// A probe answered: WAL position, and for replicas the lag.
    pub fn probed_ok(&self, wal_lsn: u64, lag_bytes: u64, lag_millis: u64) {
        self.failures.store(0, Ordering::Relaxed);
        self.wal_lsn.store(wal_lsn, Ordering::Relaxed);
        self.lag_bytes.store(lag_bytes, Ordering::Relaxed);
        self.lag_millis.store(lag_millis, Ordering::Relaxed);
        self.probed.store(true, Ordering::Relaxed);
        self.healthy.store(true, Ordering::Release);
    }

    /// A probe failed (connection refused, timeout, error).
    pub fn probe_failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.healthy.store(false, Ordering::Release);
    }

    /// Healthy as of the last probe (false before the first one).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && self.probed.load(Ordering::Relaxed)
    }

    /// A probe has ever answered.
    pub fn was_probed(&self) -> bool {
        self.probed.load(Ordering::Relaxed)
    }

    pub fn wal_lsn(&self) -> u64 {
        self.wal_lsn.load(Ordering::Relaxed)
    }

    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }

    pub fn lag_millis(&self) -> u64 {
        self.lag_millis.load(Ordering::Relaxed)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// A server connection to this member was lent.
    pub fn lent(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// A lent server connection came back or was closed.
    pub fn returned(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One cluster's live state: the history of the leader's WAL position.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// (when the probe was sent, leader WAL position it saw), oldest first.
    leader_samples: Mutex<VecDeque<(u64, u64)>>,
}

impl ClusterState {
    fn samples(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u64)>> {
        self.leader_samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A leader probe sent at `sent_at` saw the WAL at `lsn`.
    pub fn leader_sample(&self, sent_at: u64, lsn: u64) {
        let mut samples = self.samples();
        if samples.len() == LEADER_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((sent_at, lsn));
    }

    /// The newest leader WAL position seen.
    pub fn latest_leader_lsn(&self) -> Option<u64> {
        let samples = self.samples();
        samples.back().map(|(_, lsn)| *lsn)
    }

    /// How long ago the leader first had WAL beyond `replayed`: the time
    /// lag of a replica that has replayed up to there, measured on one
    /// clock (pgsplit's). Zero when the replica has everything the leader
    /// was last seen with.
    pub fn lag_nanos(&self, replayed: u64, now: u64) -> u64 {
        let samples = self.samples();
        samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map_or(0, |(sent_at, _)| now.saturating_sub(*sent_at))
    }

    /// The leader's WAL position at some moment after `since`: the first
    /// sample whose probe was sent after it. Every commit before `since` is
    /// at or below it. `None` until such a sample exists.
    pub fn leader_lsn_after(&self, since: u64) -> Option<u64> {
        let samples = self.samples();
        samples
            .iter()
            .find(|(sent_at, _)| *sent_at > since)
            .map(|(_, lsn)| *lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_position_after_a_moment() {
        let c = ClusterState::default();
        assert_eq!(c.leader_lsn_after(5), None);
        c.leader_sample(10, 100);
        c.leader_sample(20, 150);
        assert_eq!(c.leader_lsn_after(5), Some(100));
        assert_eq!(c.leader_lsn_after(10), Some(150));
        assert_eq!(c.leader_lsn_after(20), None);
        for i in 0..LEADER_SAMPLES as u64 {
            c.leader_sample(100 + i, 1000 + i);
        }
        assert_eq!(c.leader_lsn_after(0), Some(1000), "oldest kept sample");
    }

    #[test]
    fn time_lag_from_the_leader_history() {
        let c = ClusterState::default();
        c.leader_sample(1_000, 100);
        c.leader_sample(2_000, 200);
        c.leader_sample(3_000, 300);
        assert_eq!(c.lag_nanos(300, 5_000), 0, "caught up");
        assert_eq!(
            c.lag_nanos(250, 5_000),
            2_000,
            "missing what the leader had at 3000"
        );
        assert_eq!(c.lag_nanos(50, 5_000), 4_000);
    }

    #[test]
    fn health_needs_a_probe() {
        let m = MemberState::default();
        assert!(!m.is_healthy());
        m.probed_ok(10, 0, 0);
        assert!(m.is_healthy());
        m.probe_failed();
        assert!(!m.is_healthy());
        m.lent();
        assert_eq!(m.outstanding(), 1);
        m.returned();
        assert_eq!(m.outstanding(), 0);
    }

    #[test]
    fn observed_role_survives_one_missed_probe() {
        let m = MemberState::default();
        assert_eq!(m.observed_role(), Observed::Unknown);
        m.observed(false);
        m.probed_ok(1, 0, 0);
        assert_eq!(m.observed_role(), Observed::Primary);
        m.probe_failed();
        assert_eq!(m.observed_role(), Observed::Primary);
        m.probe_failed();
        assert_eq!(m.observed_role(), Observed::Unknown);
        m.observed(true);
        m.probed_ok(1, 0, 0);
        assert_eq!(m.observed_role(), Observed::InRecovery);
    }

    #[test]
    fn clock_is_monotonic_and_never_zero() {
        let a = now_nanos();
        let b = now_nanos();
        assert!(a > 0 && b >= a);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let waited = seconds_since(a, now_nanos());
        assert!(waited >= 0.002, "{waited}");
        assert_eq!(seconds_since(0, b), 0.0, "an unmarked start counts no time");
        assert_eq!(seconds_since(b, a), 0.0, "never negative");
    }
}
