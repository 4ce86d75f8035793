//! The pools of one (database, user): one [`ServerPool`] per member, made
//! on first use. A session keeps its group, so choosing a member's pool is
//! a lock and a lookup by address, without allocation. [`Pools`] holds
//! every group, sweeps idle connections and closes everything at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::pools::{PoolSettings, ServerPool};
use super::server::ServerSpec;
use crate::topology::{Member, Role, Topology, TopologyWatch};

fn roles_of(t: &Topology) -> HashMap<Arc<str>, Role> {
    t.clusters
        .iter()
        .flat_map(|c| c.members.iter().map(|m| (m.addr.clone(), m.role)))
        .collect()
}

/// One pool's figures, for status output and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub member: Arc<str>,
    pub database: Arc<str>,
    pub user: Arc<str>,
    /// Pooled and free.
    pub idle: usize,
    /// Open in all (idle, lent, being opened).
    pub open: usize,
    /// Clients waiting for one.
    pub waiting: usize,
}

impl PoolStatus {
    /// Lent to clients (or being opened for one).
    pub fn active(&self) -> usize {
        self.open.saturating_sub(self.idle)
    }
}

/// The pools of one (database, user), by member address.
pub struct PoolGroup {
    database: Arc<str>,
    user: Arc<str>,
    /// Password and settings new pools are made with (a reload changes them).
    spec: Mutex<(Arc<str>, PoolSettings)>,
    pools: Mutex<HashMap<Arc<str>, ServerPool>>,
    /// Bumped when the pools are renewed: sessions that keep a pool at
    /// hand look it up again.
    epoch: AtomicU64,
}

impl PoolGroup {
    /// (database, user) of this group.
    pub fn names(&self) -> (Arc<str>, Arc<str>) {
        (self.database.clone(), self.user.clone())
    }

    /// Changes whenever the pools are renewed (a reload).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The pool for `member`, created on first use.
    pub fn pool(&self, member: &Member) -> ServerPool {
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = pools.get(&*member.addr) {
            return p.clone();
        }
        let (password, s) = self
            .spec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let spec = ServerSpec {
            addr: member.addr.clone(),
            user: self.user.clone(),
            database: self.database.clone(),
            password,
            connect_timeout: s.connect_timeout,
            tls: s.tls.clone(),
        };
        let pool = ServerPool::new(spec, member.state.clone(), &s);
        pools.insert(member.addr.clone(), pool.clone());
        pool
    }

    fn each(&self) -> Vec<(Arc<str>, ServerPool)> {
        let pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools.iter().map(|(a, p)| (a.clone(), p.clone())).collect()
    }

    /// New password and settings: when they differ, the pools are retired
    /// (idle connections close now, lent ones when their transaction
    /// ends) and made afresh on next use.
    fn reconfigure(&self, password: Arc<str>, settings: &PoolSettings) -> bool {
        let mut spec = self.spec.lock().unwrap_or_else(PoisonError::into_inner);
        if spec.0 == password && spec.1.same_as(settings) {
            return false;
        }
        *spec = (password, settings.clone());
        drop(spec);
        let old: Vec<ServerPool> = {
            let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
            // Bumped once the old pools are out of the map: a session that
            // sees the new epoch can only find new pools.
            self.epoch.fetch_add(1, Ordering::AcqRel);
            pools.drain().map(|(_, p)| p).collect()
        };
        for pool in old {
            pool.retire();
        }
        true
    }
}

/// Every pool group pgsplit has opened.
pub struct Pools {
    settings: Mutex<PoolSettings>,
    groups: Mutex<HashMap<(String, String), Arc<PoolGroup>>>,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Arc<Pools> {
        Arc::new(Pools {
            settings: Mutex::new(settings),
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// The group for (database, user), created on first use. Sessions keep
    /// it, so this map is looked at once per login.
    pub fn group(&self, database: &str, user: &str, password: &str) -> Arc<PoolGroup> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (database.to_string(), user.to_string());
        groups
            .entry(key)
            .or_insert_with(|| {
                Arc::new(PoolGroup {
                    database: database.into(),
                    user: user.into(),
                    spec: Mutex::new((password.into(), self.settings().clone())),
                    pools: Mutex::new(HashMap::new()),
                    epoch: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Every group (a copy of the list: no lock held after).
    fn groups(&self) -> Vec<Arc<PoolGroup>> {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn each(&self) -> Vec<(Arc<PoolGroup>, Arc<str>, ServerPool)> {
        self.groups()
            .into_iter()
            .flat_map(|g| {
                g.each()
                    .into_iter()
                    .map(move |(addr, pool)| (g.clone(), addr, pool))
            })
            .collect()
    }

    /// Closes idle connections past `server_idle_timeout` or
    /// `server_lifetime`. Busy ones are judged when they come back.
    pub fn sweep(&self) {
        let (idle, life) = {
            let s = self.settings();
            (s.idle_timeout, s.lifetime)
        };
        for (_, _, pool) in self.each() {
            pool.retain_idle(|entry| {
                idle.is_none_or(|t| entry.since.elapsed() < t)
                    && life.is_none_or(|t| entry.conn.created.elapsed() < t)
            });
        }
    }

    /// Runs [`Pools::sweep`] every second until `stop`.
    pub async fn run_sweeper(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sweep(),
            }
        }
    }

    /// Every pool's figures, sorted by member, database and user.
    pub fn status(&self) -> Vec<PoolStatus> {
        let mut out: Vec<PoolStatus> = self
            .each()
            .into_iter()
            .map(|(g, addr, pool)| {
                let (idle, open, waiting) = pool.counts();
                PoolStatus {
                    member: addr,
                    database: g.database.clone(),
                    user: g.user.clone(),
                    idle,
                    open,
                    waiting,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.member, &a.database, &a.user).cmp(&(&b.member, &b.database, &b.user))
        });
        out
    }

    /// Retires the pools of members whose role changed or that left, on
    /// every topology change, until `stop`.
    pub async fn follow_topology(
        self: Arc<Self>,
        mut topology: TopologyWatch,
        stop: CancellationToken,
    ) {
        let mut roles = roles_of(&topology.borrow_and_update());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = topology.changed() => if changed.is_err() { return },
            }
            let next = roles_of(&topology.borrow_and_update());
            for (addr, role) in &roles {
                if next.get(addr) != Some(role) {
                    tracing::info!(member = %addr, from = ?role, to = ?next.get(addr), "member changed role: retiring its server connections");
                    self.retire(addr);
                }
            }
            roles = next;
        }
    }

    /// Retires every pool for `addr` (all databases and users).
    pub fn retire(&self, addr: &str) {
        for (_, a, pool) in self.each() {
            if &*a == addr {
                pool.retire();
            }
        }
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, PoolSettings> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A reload: new settings, and each user's password (None: the user
    /// is gone; its pools keep serving the sessions that have them).
    /// Returns how many (database, user) groups were renewed.
    pub fn reconfigure(
        &self,
        settings: PoolSettings,
        password_of: impl Fn(&str) -> Option<String>,
    ) -> usize {
        *self.settings() = settings.clone();
        self.groups()
            .iter()
            .filter(|g| match password_of(&g.user) {
                Some(p) => g.reconfigure(p.into(), &settings),
                None => false,
            })
            .count()
    }

    /// Replaces every server connection: idle ones close now, lent ones
    /// when their transaction ends (the console's RECONNECT).
    pub fn retire_all(&self) {
        for (_, _, pool) in self.each() {
            pool.retire();
        }
    }

    /// Closes every pool (shutdown).
    pub fn close(&self) {
        for (_, _, pool) in self.each() {
            pool.close();
        }
    }
}
