//! The `patroni` source: polls `GET /cluster` on any reachable member's
//! REST API and publishes the members it lists. Patroni's roles map to
//! pgsplit's: `leader` takes writes; `replica`, `sync_standby` and
//! `standby_leader` (the head of a standby cluster, itself in recovery)
//! serve reads. A member whose state is not running/streaming, or tagged
//! `noloadbalance`, takes no reads. While Patroni names no leader (during a
//! switchover) the cluster has none and writes wait.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{ClusterTopology, Role, TopologySender};

/// Largest `/cluster` answer read.
const MAX_RESPONSE: usize = 1 << 20;

/// What `GET /cluster` returns (the parts pgsplit uses).
#[derive(Debug, Deserialize)]
pub struct ClusterInfo {
    pub members: Vec<MemberInfo>,
}

/// One member in `GET /cluster`.
#[derive(Debug, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub state: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tags: HashMap<String, serde_json::Value>,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    #[error("{url}: {problem}")]
    Http { url: String, problem: String },
}

impl MemberInfo {
    fn role(&self) -> Role {
        if self.role == "leader" {
            Role::Leader
        } else {
            Role::Replica
        }
    }

    /// Serves reads: running and not tagged `noloadbalance`.
    fn reads(&self) -> bool {
        matches!(self.state.as_str(), "running" | "streaming")
            && !self
                .tags
                .get("noloadbalance")
                .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"))
    }
}

/// The cluster `info` describes, keeping the live state of members already
/// known (by address) and the cluster's WAL history.
pub fn to_cluster(
    name: &str,
    info: &ClusterInfo,
    previous: Option<&ClusterTopology>,
) -> ClusterTopology {
    let members = info
        .members
        .iter()
        .filter(|m| m.role != "leader" || matches!(m.state.as_str(), "running" | "streaming"))
        .map(|m| {
            let addr: Arc<str> = format!("{}:{}", m.host, m.port).into();
            (addr, m.role(), u32::from(m.reads()), Arc::from(""))
        });
    ClusterTopology::rebuilt(name, members, previous)
}

/// `GET {url}/cluster` over plain HTTP/1.1.
pub async fn get_cluster(url: &str, timeout: Duration) -> Result<ClusterInfo, PatroniError> {
    let err = |problem: String| PatroniError::Http {
        url: url.to_string(),
        problem,
    };
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| err("only http:// URLs are supported".into()))?
        .trim_end_matches('/');
    let request = format!(
        "GET /cluster HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let body = tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(authority).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    })
    .await
    .map_err(|_| err("no answer in time".into()))?
    .map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&body);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| err("not an HTTP response".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(err(format!("HTTP status {status}")));
    }
    serde_json::from_str(payload).map_err(|e| err(format!("bad /cluster JSON: {e}")))
}

/// Polls `urls` every `interval` for the cluster named `name` and publishes
/// what changes, until `stop`. Each round asks the member that answered
/// last first.
pub async fn run(
    name: String,
    urls: Vec<String>,
    interval: Duration,
    sender: TopologySender,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = interval.max(Duration::from_secs(1));
    let mut first = 0;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut info = None;
        for i in 0..urls.len() {
            let at = (first + i) % urls.len();
            match get_cluster(&urls[at], timeout).await {
                Ok(answer) => {
                    first = at;
                    info = Some(answer);
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "Patroni member did not answer"),
            }
        }
        let Some(info) = info else {
            if !failing {
                tracing::warn!(cluster = %name, "no Patroni member answered GET /cluster; keeping the last topology");
            }
            failing = true;
            continue;
        };
        failing = false;
        if !super::update_cluster(&sender, &name, |current| {
            to_cluster(&name, &info, Some(current))
        }) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"members": [
        {"name": "m1", "role": "leader", "state": "running", "host": "10.0.0.1", "port": 5432, "timeline": 1},
        {"name": "m2", "role": "sync_standby", "state": "streaming", "host": "10.0.0.2", "port": 5432, "lag": 0},
        {"name": "m3", "role": "replica", "state": "running", "host": "10.0.0.3", "port": 5433, "tags": {"noloadbalance": true}},
        {"name": "m4", "role": "replica", "state": "stopped", "host": "10.0.0.4", "port": 5432}
    ]}"#;

    #[test]
    fn maps_roles_states_and_tags() {
        let info: ClusterInfo = serde_json::from_str(SAMPLE).unwrap();
        let c = to_cluster("main", &info, None);
        assert_eq!(c.leader().map(|m| &*m.addr), Some("10.0.0.1:5432"));
        let weights: Vec<(String, u32)> = c
            .replicas()
            .map(|m| (m.addr.to_string(), m.weight))
            .collect();
        assert_eq!(
            weights,
            vec![
                ("10.0.0.2:5432".to_string(), 1),
                ("10.0.0.3:5433".to_string(), 0),
                ("10.0.0.4:5432".to_string(), 0)
            ]
        );
    }

    #[test]
    fn keeps_member_state_across_polls() {
        let info: ClusterInfo = serde_json::from_str(SAMPLE).unwrap();
        let first = to_cluster("main", &info, None);
        first.members[1].state.lent();
        let second = to_cluster("main", &info, Some(&first));
        assert_eq!(second.members[1].state.outstanding(), 1);
        assert!(Arc::ptr_eq(&first.state, &second.state));
        assert_eq!(first, second);
    }

    #[test]
    fn no_leader_while_patroni_names_none() {
        let info: ClusterInfo = serde_json::from_str(
            r#"{"members": [{"name": "m1", "role": "replica", "state": "running", "host": "h", "port": 1}]}"#,
        )
        .unwrap();
        assert!(to_cluster("main", &info, None).leader().is_none());
    }
}
