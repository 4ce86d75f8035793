//! Prometheus metrics: one registry, handles looked up once.
//!
//! Two kinds of figures:
//! - counted on the way (transactions, queries, their durations, checkout
//!   waits, closes, errors, leader changes): a session looks its handles
//!   up once at login ([`SessionMetrics`], shared per cluster, database
//!   and user), so the hot path does only atomic adds;
//! - read at scrape time from the state pgsplit keeps anyway (client and
//!   server connections by state, members, lag, health, limits): nothing
//!   on the hot path at all.
//!
//! Labels stay bounded: cluster, member, role, route, database, user,
//! reason, code; never a query text or a client id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Where a unit of work ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Leader,
    Replica,
    /// A read that went to the leader because no replica qualified.
    Fallback,
}

impl Route {
    const ALL: [Route; 3] = [Route::Leader, Route::Replica, Route::Fallback];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Leader => "leader",
            Route::Replica => "replica",
            Route::Fallback => "fallback",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Buckets for request and transaction times: 100 µs to 30 s.
const TIME_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Every metric pgsplit exports.
pub struct Metrics {
    registry: Registry,
    transactions: IntCounterVec,
    queries: IntCounterVec,
    transaction_seconds: HistogramVec,
    query_seconds: HistogramVec,
    checkout_wait_seconds: HistogramVec,
    client_closes: IntCounterVec,
    errors: IntCounterVec,
    leader_changes: IntCounterVec,
    pins: IntCounter,
    reloads: IntCounterVec,
    // Read at scrape time.
    pub client_connections: IntGaugeVec,
    pub server_connections: IntGaugeVec,
    pub pool_waiting_clients: IntGaugeVec,
    pub members: IntGaugeVec,
    pub member_healthy: IntGaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_lag_seconds: prometheus::GaugeVec,
    pub pool_size: IntGauge,
    pub max_client_connections: IntGauge,
    session_handles: Mutex<HashMap<(String, String, String), Arc<SessionMetrics>>>,
}

/// The handles one session uses, for its (cluster, database, user).
pub struct SessionMetrics {
    transactions: [IntCounter; 3],
    queries: [IntCounter; 3],
    transaction_seconds: [Histogram; 3],
    query_seconds: [Histogram; 3],
    checkout_wait: [Histogram; 2],
    /// Totals in microseconds, for the console's SHOW STATS.
    transaction_us: AtomicU64,
    query_us: AtomicU64,
    wait_us: AtomicU64,
}

/// Totals of one database, for SHOW STATS.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DatabaseTotals {
    pub transactions: u64,
    pub queries: u64,
    pub transaction_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

impl SessionMetrics {
    /// A transaction (a unit that held a server) ended.
    pub fn transaction(&self, route: Route, seconds: f64) {
        self.transactions[route.index()].inc();
        self.transaction_seconds[route.index()].observe(seconds);
        self.transaction_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// A request (a simple Query, or extended messages up to Sync) was
    /// answered.
    pub fn query(&self, route: Route, seconds: f64) {
        self.queries[route.index()].inc();
        self.query_seconds[route.index()].observe(seconds);
        self.query_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// A checkout for the leader (`leader`) or a replica took `seconds`.
    pub fn checkout_wait(&self, leader: bool, seconds: f64) {
        self.checkout_wait[usize::from(!leader)].observe(seconds);
        self.wait_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(TIME_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let build = gauge(
            &r,
            "pgsplit_build_info",
            "pgsplit's version (always 1).",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let tx_labels = &["cluster", "route", "database", "user"];
        let pool_size = IntGauge::new(
            "pgsplit_pool_size",
            "Configured server connections per member, database and user.",
        )
        .expect("valid metric");
        r.register(Box::new(pool_size.clone()))
            .expect("unique metric");
        let max_clients = IntGauge::new(
            "pgsplit_max_client_connections",
            "Configured limit of client connections.",
        )
        .expect("valid metric");
        r.register(Box::new(max_clients.clone()))
            .expect("unique metric");
        let pins = IntCounter::new(
            "pgsplit_client_pins_total",
            "Clients pinned to their server by session state pgsplit cannot carry (transaction mode).",
        )
        .expect("valid metric");
        r.register(Box::new(pins.clone())).expect("unique metric");
        let lag_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "pgsplit_replica_lag_seconds",
                "How long ago the leader had the WAL a replica has not replayed yet.",
            ),
            &["cluster", "member"],
        )
        .expect("valid metric");
        r.register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        Metrics {
            transactions: counter(
                &r,
                "pgsplit_transactions_total",
                "Transactions (units that held a server) by route.",
                tx_labels,
            ),
            queries: counter(
                &r,
                "pgsplit_queries_total",
                "Requests (a Query, or extended messages up to Sync) by route.",
                tx_labels,
            ),
            transaction_seconds: histogram(
                &r,
                "pgsplit_transaction_duration_seconds",
                "Time a transaction held its server.",
                &["cluster", "route"],
            ),
            query_seconds: histogram(
                &r,
                "pgsplit_query_duration_seconds",
                "Time from a request to its ReadyForQuery.",
                &["cluster", "route"],
            ),
            checkout_wait_seconds: histogram(
                &r,
                "pgsplit_checkout_wait_seconds",
                "Time waiting for a server connection.",
                &["cluster", "role"],
            ),
            client_closes: counter(
                &r,
                "pgsplit_client_disconnects_total",
                "Closed client connections by reason.",
                &["reason"],
            ),
            errors: counter(
                &r,
                "pgsplit_errors_total",
                "Errors pgsplit itself sent to clients, by SQLSTATE.",
                &["code"],
            ),
            leader_changes: counter(
                &r,
                "pgsplit_leader_changes_total",
                "Times a cluster's leader changed.",
                &["cluster"],
            ),
            reloads: counter(
                &r,
                "pgsplit_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            pins,
            client_connections: gauge(
                &r,
                "pgsplit_client_connections",
                "Client connections by state (active: holds a server; waiting: for one; idle).",
                &["state"],
            ),
            server_connections: gauge(
                &r,
                "pgsplit_server_connections",
                "Server connections by member and state (active: lent to a client; idle: pooled).",
                &["cluster", "member", "role", "state"],
            ),
            pool_waiting_clients: gauge(
                &r,
                "pgsplit_pool_waiting_clients",
                "Clients waiting for a server connection, by member.",
                &["cluster", "member", "role"],
            ),
            members: gauge(
                &r,
                "pgsplit_members",
                "Members by role.",
                &["cluster", "role"],
            ),
            member_healthy: gauge(
                &r,
                "pgsplit_member_healthy",
                "1 when a member's last probe answered.",
                &["cluster", "member", "role"],
            ),
            replica_lag_bytes: gauge(
                &r,
                "pgsplit_replica_lag_bytes",
                "Bytes of WAL a replica has not replayed yet.",
                &["cluster", "member"],
            ),
            replica_lag_seconds: lag_seconds,
            pool_size,
            max_client_connections: max_clients,
            session_handles: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// The handles for sessions of (cluster, database, user), looked up
    /// once per login.
    pub fn session(&self, cluster: &str, database: &str, user: &str) -> Arc<SessionMetrics> {
        let mut handles = self
            .session_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (cluster.to_string(), database.to_string(), user.to_string());
        handles
            .entry(key)
            .or_insert_with(|| {
                let by_route = |vec: &IntCounterVec| {
                    Route::ALL
                        .map(|r| vec.with_label_values(&[cluster, r.as_str(), database, user]))
                };
                let times = |vec: &HistogramVec| {
                    Route::ALL.map(|r| vec.with_label_values(&[cluster, r.as_str()]))
                };
                Arc::new(SessionMetrics {
                    transactions: by_route(&self.transactions),
                    queries: by_route(&self.queries),
                    transaction_seconds: times(&self.transaction_seconds),
                    query_seconds: times(&self.query_seconds),
                    transaction_us: AtomicU64::new(0),
                    query_us: AtomicU64::new(0),
                    wait_us: AtomicU64::new(0),
                    checkout_wait: ["leader", "replica"].map(|role| {
                        self.checkout_wait_seconds
                            .with_label_values(&[cluster, role])
                    }),
                })
            })
            .clone()
    }

    /// Totals by database since start, summed over clusters and users.
    pub fn database_totals(&self) -> Vec<(String, DatabaseTotals)> {
        let handles = self
            .session_handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut by_db: std::collections::BTreeMap<String, DatabaseTotals> = Default::default();
        for ((_, database, _), h) in handles.iter() {
            let t = by_db.entry(database.clone()).or_default();
            t.transactions += h.transactions.iter().map(IntCounter::get).sum::<u64>();
            t.queries += h.queries.iter().map(IntCounter::get).sum::<u64>();
            t.transaction_us += h.transaction_us.load(Ordering::Relaxed);
            t.query_us += h.query_us.load(Ordering::Relaxed);
            t.wait_us += h.wait_us.load(Ordering::Relaxed);
        }
        by_db.into_iter().collect()
    }

    /// A client connection closed for `reason`.
    pub fn client_closed(&self, reason: &str) {
        self.client_closes.with_label_values(&[reason]).inc();
    }

    /// pgsplit sent an error with `code` to a client.
    pub fn error_sent(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    /// The leader of `cluster` changed.
    pub fn leader_changed(&self, cluster: &str) {
        self.leader_changes.with_label_values(&[cluster]).inc();
    }

    /// Brings the pin counter up to `total` (counted by the proxy).
    pub fn sync_pins(&self, total: u64) {
        let seen = self.pins.get();
        if total > seen {
            self.pins.inc_by(total - seen);
        }
    }

    /// A reload ended (`ok` or `refused`).
    pub fn reloaded(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_handles_are_shared_and_counted() {
        let m = Metrics::new();
        let a = m.session("main", "app", "u");
        let b = m.session("main", "app", "u");
        assert!(Arc::ptr_eq(&a, &b));
        a.transaction(Route::Replica, 0.002);
        b.query(Route::Fallback, 0.001);
        m.client_closed("client_terminate");
        let text = m.encode();
        assert!(text.contains(
            "pgsplit_transactions_total{cluster=\"main\",database=\"app\",route=\"replica\",user=\"u\"} 1"
        ), "{text}");
        assert!(text.contains("pgsplit_queries_total{cluster=\"main\",database=\"app\",route=\"fallback\",user=\"u\"} 1"));
        assert!(text.contains("pgsplit_transaction_duration_seconds_bucket{cluster=\"main\",route=\"replica\",le=\"0.0025\"} 1"));
        assert!(text.contains("pgsplit_client_disconnects_total{reason=\"client_terminate\"} 1"));
        assert!(text.contains("pgsplit_build_info{version="));
    }
}
