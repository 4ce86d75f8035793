//! Taking a server of a role for a session: the common case without
//! waiting (an idle server of the chosen member's pool that already
//! carries the client's settings), and every other case with waiting:
//! no leader known yet (wait for the topology, up to
//! `leader_wait_timeout`, then 57P03), an unreachable or starting leader,
//! a new connection whose role disagrees with the topology, a server
//! parked in session mode, a pool at its limit.
//!
//! Which member: the leader, or a replica chosen among those within the
//! lag limit that have replayed what read-your-writes asks for, falling
//! back to the leader as configured ([`crate::route::choose`]).

use super::registry::ClientState;
use super::session::{CloseReason, Session};
use crate::config::{LeaderReads, PoolMode, ReadYourWrites};
use crate::metrics::Route;
use crate::pool::pools::{discard, CheckoutError, PooledServer};
use crate::pool::server::ServerError;
use crate::route::choose::choose_reader;
use crate::topology::{now_nanos, seconds_since, ClusterTopology, Member, Role, Topology};
use crate::wire::messages::ProxyError;

impl Session<'_> {
    /// Takes a server for `role` without waiting, when the session holds
    /// none and has none parked (session mode), pgsplit is not paused,
    /// the topology names a member, its pool has an idle server whose role
    /// checks out, and that server already carries the client's settings.
    /// Anything else returns false and is left to
    /// [`Session::take_server`], which handles every case.
    pub(super) fn take_server_now(&mut self, role: Role) -> bool {
        if self.server.is_some() || self.routing.parked.is_some() || self.shared.is_paused() {
            return false;
        }
        let snapshot = self.routing.take_snapshot();
        let taken = self.take_idle_server(&snapshot, role);
        self.routing.return_snapshot(snapshot);
        taken
    }

    /// [`Session::take_server_now`] with a topology snapshot at hand.
    fn take_idle_server(&mut self, snapshot: &Topology, role: Role) -> bool {
        let Some(cluster) = snapshot.cluster(&self.routing.cluster) else {
            return false;
        };
        let Ok(member) = self.pick_member(cluster, role) else {
            return false;
        };
        let Some(mut server) = self.routing.pool_for(member).checkout_idle() else {
            return false;
        };
        let role_agrees = !matches!(
            (member.role, server.in_hot_standby()),
            (Role::Leader, Some(true)) | (Role::Replica, Some(false))
        );
        if !role_agrees || !self.login.params.carried_by(&mut server) {
            // Back to the pool; the slow path takes it again and deals
            // with it.
            drop(server);
            return false;
        }
        self.routing
            .metrics
            .checkout_wait(member.role == Role::Leader, 0.0);
        self.held(server, member, role);
        true
    }

    /// Gives back (transaction mode) or parks (session mode) the held
    /// server, which is idle and in sync.
    pub(super) async fn let_go_of_server(&mut self) {
        if self.mode == PoolMode::Transaction {
            self.release_server().await;
            return;
        }
        let cancelled = self.login.cancel.release().await;
        self.routing.held_member = None;
        if let (Some(server), Some(role)) = (self.server.take(), self.routing.held.take()) {
            if cancelled {
                discard(server);
            } else {
                self.routing.parked = Some((server, role));
            }
        }
    }

    /// Takes a server of `role` (a replica may fall back to the leader).
    /// While the cluster has no leader, a request for one waits for the
    /// topology to name one, up to `leader_wait_timeout`. A new connection
    /// for the leader that reports it is in recovery (`in_hot_standby`) is
    /// closed, the member is marked as in recovery, and the wait goes on.
    /// Returns false when the request was answered with an error instead.
    pub(super) async fn take_server(&mut self, role: Role, tag: u8) -> Result<bool, CloseReason> {
        let wait = self.settings.config.routing.leader_wait_timeout.0;
        let deadline = tokio::time::Instant::now() + wait;
        let mut topology = self.shared.topology.clone();
        loop {
            let snapshot = topology.borrow_and_update().clone();
            let Some(cluster) = snapshot.cluster(&self.routing.cluster) else {
                let e = no_member(format!("cluster \"{}\" is not known", self.routing.cluster));
                self.fail_request(tag, e);
                return Ok(false);
            };
            let member = match self.pick_member(cluster, role) {
                Ok(m) => m.clone(),
                Err(Pick::Refused(e)) => {
                    self.fail_request(tag, e);
                    return Ok(false);
                }
                Err(Pick::NoLeader) => {
                    if !Box::pin(self.wait_for_topology(&mut topology, deadline, tag, wait)).await?
                    {
                        return Ok(false);
                    }
                    continue;
                }
            };
            if let Some((server, parked_role)) = self.routing.parked.take() {
                if parked_role == member.role {
                    self.hold(server, &member, role).await?;
                    return Ok(true);
                }
                self.routing.parked = Some((server, parked_role));
            }
            let pool = self.routing.pool_for(&member).clone();
            self.login.entry.set_state(ClientState::Waiting);
            if self.shared.is_paused() {
                self.shared.wait_while_paused().await;
            }
            let asked = now_nanos();
            let checkout = self.acquire_server(pool).await;
            self.routing.metrics.checkout_wait(
                member.role == Role::Leader,
                seconds_since(asked, now_nanos()),
            );
            let server = match checkout {
                Ok(Some(server)) => server,
                Ok(None) => {
                    self.cancelled_while_waiting(tag);
                    return Ok(false);
                }
                // The leader cannot be reached (it may be failing over):
                // wait for the topology rather than fail the request.
                Err(CheckoutError::Connect(e))
                    if member.role == Role::Leader && leader_unavailable(&e) =>
                {
                    if !Box::pin(self.wait_for_topology(&mut topology, deadline, tag, RETRY_SOON))
                        .await?
                    {
                        return Ok(false);
                    }
                    continue;
                }
                Err(e) => return Err(Box::pin(self.no_server(e)).await),
            };
            if member.role == Role::Leader && server.in_hot_standby() == Some(true) {
                tracing::warn!(member = %member.addr, "a server opened for the leader is in recovery; waiting for the topology");
                member.state.observed(true);
                discard(server);
                // The topology may name it leader just before it is
                // promoted: look again soon, whether or not it changes.
                if !Box::pin(self.wait_for_topology(&mut topology, deadline, tag, RETRY_SOON))
                    .await?
                {
                    return Ok(false);
                }
                continue;
            }
            if member.role == Role::Replica && server.in_hot_standby() == Some(false) {
                // Promoted, or never a replica: suspect until the topology
                // agrees; the read goes elsewhere.
                tracing::warn!(member = %member.addr, "a server opened for a replica is not in recovery; it takes no reads until the topology agrees");
                member.state.observed(false);
                discard(server);
                continue;
            }
            self.hold(server, &member, role).await?;
            return Ok(true);
        }
    }

    /// Waits for the next topology snapshot, or `at_most`, until
    /// `deadline`. Returns false when the request was answered instead:
    /// 57P03 at the deadline, 57014 when the client cancelled.
    async fn wait_for_topology(
        &mut self,
        topology: &mut crate::topology::TopologyWatch,
        deadline: tokio::time::Instant,
        tag: u8,
        at_most: std::time::Duration,
    ) -> Result<bool, CloseReason> {
        if tokio::time::Instant::now() >= deadline {
            return self.no_leader_in_time(tag);
        }
        let until = deadline.min(tokio::time::Instant::now() + at_most);
        self.login.cancel.begin_wait();
        let changed = tokio::select! {
            r = tokio::time::timeout_at(until, topology.changed()) => Some(r),
            _ = self.login.cancel.cancelled() => None,
        };
        let cancelled = self.login.cancel.end_wait();
        match changed {
            _ if cancelled => {
                self.cancelled_while_waiting(tag);
                Ok(false)
            }
            None => {
                self.cancelled_while_waiting(tag);
                Ok(false)
            }
            Some(Ok(Ok(()))) => Ok(true),
            Some(Err(_)) if tokio::time::Instant::now() < deadline => Ok(true),
            Some(Ok(Err(_))) | Some(Err(_)) => self.no_leader_in_time(tag),
        }
    }

    fn no_leader_in_time(&mut self, tag: u8) -> Result<bool, CloseReason> {
        let wait = self.settings.config.routing.leader_wait_timeout.0;
        let e = no_member(format!(
            "no leader known for cluster \"{}\" within leader_wait_timeout ({wait:?})",
            self.routing.cluster
        ));
        self.fail_request(tag, e);
        Ok(false)
    }

    /// Holds `server`, of `member`, once it carries the client's settings.
    /// Its work counts as `wanted`'s, or as a fallback when a read went
    /// to the leader. Bringing a server to the client's settings is boxed,
    /// as are the other rare branches of [`Session::take_server`]: their
    /// futures would otherwise sit in the route future boxed on every wait
    /// for a server, making it too large for the allocator's fast path
    /// (928 bytes with them, copied into a fresh allocation per wait).
    async fn hold(
        &mut self,
        mut server: PooledServer,
        member: &Member,
        wanted: Role,
    ) -> Result<(), CloseReason> {
        if !self.login.params.carried_by(&mut server) {
            server = Box::pin(self.prepare_server(server)).await?;
        }
        self.held(server, member, wanted);
        Ok(())
    }

    /// Holds `server`, which carries the client's settings.
    fn held(&mut self, server: PooledServer, member: &Member, wanted: Role) {
        self.routing.route = match (wanted, member.role) {
            (Role::Replica, Role::Leader) => Route::Fallback,
            (_, Role::Leader) => Route::Leader,
            (_, Role::Replica) => Route::Replica,
        };
        self.login.entry.set_state(ClientState::Active);
        self.routing.held = Some(member.role);
        self.routing.held_member = Some(member.state.clone());
        self.login.cancel.hold(server.cancel_target());
        self.server = Some(server);
    }

    /// The member for `role`: the leader, or a replica chosen among those
    /// that qualify (falling back to the leader as configured).
    fn pick_member<'t>(
        &mut self,
        cluster: &'t ClusterTopology,
        role: Role,
    ) -> Result<&'t Member, Pick> {
        let leader = || cluster.leader().ok_or(Pick::NoLeader);
        if role == Role::Leader {
            return leader();
        }
        let need = match self.need_lsn(cluster) {
            Ok(need) => need,
            // Read-your-writes cannot be judged yet: the leader is safe.
            Err(()) => return leader(),
        };
        let routing = &self.settings.config.routing;
        if let Some(m) = choose_reader(cluster, routing, need, &mut self.routing.rng) {
            return Ok(m);
        }
        if self.routing.read_only {
            return Err(Pick::Refused(no_member(
                "no replica can serve this read-only database right now".into(),
            )));
        }
        if routing.leader_reads == LeaderReads::Never {
            return Err(Pick::Refused(no_member(
                "no replica can take reads right now (leader_reads = \"never\")".into(),
            )));
        }
        leader()
    }

    /// The WAL position a replica must have replayed for this client to see
    /// its own writes; `Err` while it cannot be known yet.
    fn need_lsn(&mut self, cluster: &ClusterTopology) -> Result<Option<u64>, ()> {
        if self.settings.config.routing.read_your_writes == ReadYourWrites::Off
            || self.routing.read_only
        {
            return Ok(None);
        }
        let wrote_at = self.routing.mark.get();
        if wrote_at == 0 {
            return Ok(None);
        }
        if self.routing.resolved.0 == wrote_at {
            return Ok(Some(self.routing.resolved.1));
        }
        let lsn = cluster.state.leader_lsn_after(wrote_at).ok_or(())?;
        self.routing.resolved = (wrote_at, lsn);
        Ok(Some(lsn))
    }
}

/// The leader cannot be used right now but may be soon: unreachable, or
/// refusing connections while it shuts down or starts (57P03).
fn leader_unavailable(e: &ServerError) -> bool {
    match e {
        ServerError::Io { .. } | ServerError::Timeout(_) => true,
        ServerError::Rejected { code, .. } => code == "57P03",
        _ => false,
    }
}

/// How soon a request retries a leader that could not be used.
const RETRY_SOON: std::time::Duration = std::time::Duration::from_millis(50);

/// Why no member could be picked.
enum Pick {
    /// The cluster has no leader right now: wait for one.
    NoLeader,
    /// Answer the request with this error.
    Refused(ProxyError),
}

fn no_member(message: String) -> ProxyError {
    ProxyError::error("57P03", message)
}
