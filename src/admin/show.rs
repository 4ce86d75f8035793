//! The console's SHOW commands, with PgBouncer's column names where it
//! has the command. Pools are per (database, user) as PgBouncer's are,
//! summed over the members pgsplit keeps a pool for; per-member figures
//! are in SHOW SERVERS and SHOW TOPOLOGY.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::resultset::{text, Kind, ResultSet};
use crate::client::registry::ClientState;
use crate::proxy::Shared;
use crate::topology::Role;

/// The result of `SHOW <what>`, or None for an unknown target.
pub fn show(what: &str, shared: &Shared) -> Option<ResultSet> {
    Some(match what {
        "pools" => pools(shared),
        "clients" => clients(shared),
        "servers" => servers(shared),
        "stats" => stats(shared),
        "databases" => databases(shared),
        "config" => config(shared),
        "version" => {
            let mut rs = ResultSet::new(&[("version", Kind::Text)]);
            rs.row(vec![text(format!("pgsplit {}", env!("CARGO_PKG_VERSION")))]);
            rs
        }
        "lists" => lists(shared),
        "topology" => topology(shared),
        _ => return None,
    })
}

fn zero() -> Option<String> {
    text(0)
}

fn pool_mode(shared: &Shared) -> &'static str {
    match shared.config().proxy.pool_mode {
        crate::config::PoolMode::Session => "session",
        crate::config::PoolMode::Transaction => "transaction",
    }
}

/// (database, user) -> (active clients, waiting clients).
fn client_counts(shared: &Shared) -> BTreeMap<(String, String), (usize, usize)> {
    let mut counts: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for c in shared.client_list.list() {
        let e = counts
            .entry((c.database.to_string(), c.user.to_string()))
            .or_default();
        match c.state() {
            ClientState::Active => e.0 += 1,
            ClientState::Waiting => e.1 += 1,
            ClientState::Idle => {}
        }
    }
    counts
}

fn pools(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", Kind::Text),
        ("user", Kind::Text),
        ("cl_active", Kind::Int),
        ("cl_waiting", Kind::Int),
        ("cl_active_cancel_req", Kind::Int),
        ("cl_waiting_cancel_req", Kind::Int),
        ("sv_active", Kind::Int),
        ("sv_active_cancel", Kind::Int),
        ("sv_being_canceled", Kind::Int),
        ("sv_idle", Kind::Int),
        ("sv_used", Kind::Int),
        ("sv_tested", Kind::Int),
        ("sv_login", Kind::Int),
        ("maxwait", Kind::Int),
        ("maxwait_us", Kind::Int),
        ("pool_mode", Kind::Text),
    ]);
    // (database, user) -> (server active, server idle)
    let mut servers: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for p in shared.pools.status() {
        let e = servers
            .entry((p.database.to_string(), p.user.to_string()))
            .or_default();
        e.0 += p.active();
        e.1 += p.idle;
    }
    let clients = client_counts(shared);
    let keys: std::collections::BTreeSet<&(String, String)> =
        servers.keys().chain(clients.keys()).collect();
    for key in keys {
        let (sv_active, sv_idle) = servers.get(key).copied().unwrap_or_default();
        let (cl_active, cl_waiting) = clients.get(key).copied().unwrap_or_default();
        rs.row(vec![
            text(&key.0),
            text(&key.1),
            text(cl_active),
            text(cl_waiting),
            zero(),
            zero(),
            text(sv_active),
            zero(),
            zero(),
            text(sv_idle),
            zero(),
            zero(),
            zero(),
            zero(),
            zero(),
            text(pool_mode(shared)),
        ]);
    }
    rs
}

/// Columns of SHOW CLIENTS and SHOW SERVERS.
const CONNECTION_COLUMNS: &[(&str, Kind)] = &[
    ("type", Kind::Text),
    ("user", Kind::Text),
    ("database", Kind::Text),
    ("state", Kind::Text),
    ("addr", Kind::Text),
    ("port", Kind::Int),
    ("local_addr", Kind::Text),
    ("local_port", Kind::Int),
    ("connect_time", Kind::Text),
    ("request_time", Kind::Text),
    ("wait", Kind::Int),
    ("wait_us", Kind::Int),
    ("close_needed", Kind::Int),
    ("ptr", Kind::Text),
    ("link", Kind::Text),
    ("remote_pid", Kind::Int),
    ("tls", Kind::Text),
    ("application_name", Kind::Text),
];

fn clients(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(CONNECTION_COLUMNS);
    let config = shared.config();
    let (local_host, local_port) = split_addr(&config.proxy.listen);
    for c in shared.client_list.list() {
        let state = match c.state() {
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::Idle => "idle",
        };
        let since = utc(c.connected);
        rs.row(vec![
            text("C"),
            text(&*c.user),
            text(&*c.database),
            text(state),
            text(c.addr.ip()),
            text(c.addr.port()),
            text(&local_host),
            text(&local_port),
            text(&since),
            text(&since),
            zero(),
            zero(),
            zero(),
            text(format!("{:x}", c.id)),
            None,
            zero(),
            text(if c.tls { "TLS" } else { "" }),
            text(""),
        ]);
    }
    rs
}

/// One row per server connection, from the pools' counts (pgsplit does
/// not list lent connections one by one).
fn servers(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(CONNECTION_COLUMNS);
    for p in shared.pools.status() {
        let (host, port) = split_addr(&p.member);
        for (state, n) in [("active", p.active()), ("idle", p.idle)] {
            for _ in 0..n {
                rs.row(vec![
                    text("S"),
                    text(&*p.user),
                    text(&*p.database),
                    text(state),
                    text(&host),
                    text(&port),
                    None,
                    None,
                    None,
                    None,
                    zero(),
                    zero(),
                    zero(),
                    None,
                    None,
                    zero(),
                    text(""),
                    text(""),
                ]);
            }
        }
    }
    rs
}

fn stats(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", Kind::Text),
        ("total_xact_count", Kind::Int),
        ("total_query_count", Kind::Int),
        ("total_received", Kind::Int),
        ("total_sent", Kind::Int),
        ("total_xact_time", Kind::Int),
        ("total_query_time", Kind::Int),
        ("total_wait_time", Kind::Int),
        ("avg_xact_count", Kind::Int),
        ("avg_query_count", Kind::Int),
        ("avg_recv", Kind::Int),
        ("avg_sent", Kind::Int),
        ("avg_xact_time", Kind::Int),
        ("avg_query_time", Kind::Int),
        ("avg_wait_time", Kind::Int),
        // PgBouncer before 1.8 named total_query_count so; exporters
        // written then still ask for it.
        ("total_requests", Kind::Int),
    ]);
    let uptime = shared.started.elapsed().as_secs().max(1);
    for (database, t) in shared.metrics.database_totals() {
        let avg = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        rs.row(vec![
            text(&database),
            text(t.transactions),
            text(t.queries),
            zero(),
            zero(),
            text(t.transaction_us),
            text(t.query_us),
            text(t.wait_us),
            text(t.transactions / uptime),
            text(t.queries / uptime),
            zero(),
            zero(),
            text(avg(t.transaction_us, t.transactions)),
            text(avg(t.query_us, t.queries)),
            text(avg(t.wait_us, t.transactions)),
            text(t.queries),
        ]);
    }
    rs
}

fn databases(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("name", Kind::Text),
        ("host", Kind::Text),
        ("port", Kind::Int),
        ("database", Kind::Text),
        ("force_user", Kind::Text),
        ("pool_size", Kind::Int),
        ("min_pool_size", Kind::Int),
        ("reserve_pool", Kind::Int),
        ("pool_mode", Kind::Text),
        ("max_connections", Kind::Int),
        ("current_connections", Kind::Int),
        ("paused", Kind::Int),
        ("disabled", Kind::Int),
        ("cluster", Kind::Text),
    ]);
    let config = shared.config();
    let topology = shared.topology.borrow().clone();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    for p in shared.pools.status() {
        *open.entry(p.database.to_string()).or_default() += p.open;
    }
    for (database, current) in open {
        let cluster = config.cluster_for(&database).map(|c| c.name.clone());
        let leader = cluster
            .as_deref()
            .and_then(|c| topology.cluster(c))
            .and_then(|c| c.leader())
            .map(|m| m.addr.to_string());
        let (host, port) = leader
            .as_deref()
            .map_or((String::new(), String::new()), split_addr);
        rs.row(vec![
            text(&database),
            text(host),
            text(port),
            text(&database),
            None,
            text(config.proxy.pool_size),
            zero(),
            zero(),
            text(pool_mode(shared)),
            zero(),
            text(current),
            text(u8::from(shared.is_paused())),
            zero(),
            cluster,
        ]);
    }
    rs
}

/// `[proxy]` and `[routing]` keys: value, default, whether RELOAD applies
/// a change.
fn config(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("key", Kind::Text),
        ("value", Kind::Text),
        ("default", Kind::Text),
        ("changeable", Kind::Text),
    ]);
    let current = toml::Value::try_from(&**shared.config()).ok();
    let default = toml::Value::try_from(crate::config::Config::default()).ok();
    for section in ["proxy", "routing"] {
        let table = current
            .as_ref()
            .and_then(|v| v.get(section))
            .and_then(|v| v.as_table());
        let defaults = default
            .as_ref()
            .and_then(|v| v.get(section))
            .and_then(|v| v.as_table());
        for (key, value) in table.into_iter().flatten() {
            let default_value = defaults.and_then(|d| d.get(key));
            let restart = matches!(key.as_str(), "listen" | "admin_listen");
            rs.row(vec![
                text(format!("{section}.{key}")),
                text(plain(value)),
                default_value.map(plain),
                text(if restart { "no" } else { "yes" }),
            ]);
        }
    }
    rs
}

/// A TOML value as a console shows it: strings without quotes.
fn plain(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn lists(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[("list", Kind::Text), ("items", Kind::Int)]);
    let pools = shared.pools.status();
    let databases: std::collections::BTreeSet<&str> = pools.iter().map(|p| &*p.database).collect();
    let users = shared.config().users.len();
    let clients = shared.client_list.list();
    let used_clients = clients
        .iter()
        .filter(|c| c.state() != ClientState::Idle)
        .count();
    let logging_in = shared
        .clients
        .load(Ordering::Relaxed)
        .saturating_sub(clients.len());
    let free_servers: usize = pools.iter().map(|p| p.idle).sum();
    let used_servers: usize = pools.iter().map(|p| p.active()).sum();
    for (list, items) in [
        ("databases", databases.len()),
        ("users", users),
        ("pools", pools.len()),
        ("free_clients", clients.len() - used_clients),
        ("used_clients", used_clients),
        ("login_clients", logging_in),
        ("free_servers", free_servers),
        ("used_servers", used_servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        rs.row(vec![text(list), text(items)]);
    }
    rs
}

fn topology(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("cluster", Kind::Text),
        ("member", Kind::Text),
        ("role", Kind::Text),
        ("healthy", Kind::Text),
        ("weight", Kind::Int),
        ("zone", Kind::Text),
        ("lag_bytes", Kind::Int),
        ("lag_seconds", Kind::Float),
        ("lent", Kind::Int),
    ]);
    let topology = shared.topology.borrow().clone();
    for c in &topology.clusters {
        for m in &c.members {
            let s = &m.state;
            rs.row(vec![
                text(&c.name),
                text(&m.addr),
                text(match m.role {
                    Role::Leader => "leader",
                    Role::Replica => "replica",
                }),
                text(if s.is_healthy() { "yes" } else { "no" }),
                text(m.weight),
                text(&m.zone),
                text(s.lag_bytes()),
                text(s.lag_millis() as f64 / 1000.0),
                text(s.outstanding()),
            ]);
        }
    }
    rs
}

/// ("host", "port") of `host:port` (brackets of an IPv6 host removed).
fn split_addr(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.to_string(),
        ),
        None => (addr.to_string(), String::new()),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`, as PgBouncer prints times.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_print_as_pgbouncer_prints_them() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_651_200 + 3_723);
        assert_eq!(utc(t), "2026-11-26 01:02:03 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_addr("10.0.0.1:5432"),
            ("10.0.0.1".into(), "5432".into())
        );
        assert_eq!(
            split_addr("[fd00::1]:6432"),
            ("fd00::1".into(), "6432".into())
        );
    }
}
