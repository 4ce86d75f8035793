//! pgsplit following a real Patroni cluster (etcd + three members) through
//! the `patroni` source, under a steady write and read load: a switchover
//! with `patronictl`, then a kill -9 of the leader's Patroni and
//! postmaster. Measured: failed writes, and how soon writes succeed
//! through pgsplit after the new leader accepts writes.

mod support;

use pgsplit::config::Config;
use pgsplit::proxy::Proxy;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::connect;
use support::fake_apiserver::FakeApiserver;
use support::patroni::{Dcs, PatroniCluster, SCOPE};

/// A write that got no answer at all (pgsplit must never leave one hanging).
const NO_ANSWER: &str = "no answer within 40 s";

/// One write's outcome: when it started and finished, and whether it
/// succeeded (and if so, on a node not in recovery).
#[derive(Debug, Clone)]
struct Write {
    id: i32,
    started: Instant,
    finished: Instant,
    error: Option<String>,
    in_recovery: bool,
}

/// When member `i` first accepts writes after `since`, polled directly.
async fn accepts_writes_at(url: String, since: Instant) -> Instant {
    let deadline = since + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(c) = connect(&url).await {
            if let Ok(row) = c.query_one("SELECT pg_is_in_recovery()", &[]).await {
                if !row.get::<_, bool>(0) {
                    return Instant::now();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{url} never accepted writes");
}

/// pgsplit in front of the cluster with `discovery`, and writers and
/// readers running through it.
struct Load {
    proxy: Proxy,
    url: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Write>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(discovery: &str) -> Load {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npool_size = 8\n\
             [routing]\nleader_wait_timeout = \"30s\"\n\
             [[users]]\nname = \"app\"\npassword = \"app-secret\"\n\
             [[clusters]]\nname = \"main\"\n[clusters.discovery]\n{discovery}\n"
        );
        let proxy = Proxy::start(Config::parse(&text, "patroni test", std::iter::empty()).unwrap())
            .await
            .unwrap();
        let url = format!(
            "postgres://app:app-secret@127.0.0.1:{}/app?sslmode=disable",
            proxy.local_addr().port()
        );
        // Wait until pgsplit has seen the cluster and writes go through.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(c) = connect(&url).await {
                if c.batch_execute("CREATE TABLE IF NOT EXISTS pt(id int PRIMARY KEY)")
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pgsplit never reached the Patroni leader"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::<Write>::new()));
        let mut tasks = Vec::new();
        for w in 0..4i32 {
            let (url, stop, log) = (url.clone(), stop.clone(), log.clone());
            tasks.push(tokio::spawn(write_loop(url, w * 1_000_000, stop, log)));
        }
        // Readers keep reading meanwhile.
        for _ in 0..2 {
            let (url, stop) = (url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(c) = connect(&url).await {
                        while !stop.load(Ordering::Relaxed) {
                            let read = c.query_one("SELECT count(*) FROM pt", &[]);
                            match tokio::time::timeout(Duration::from_secs(40), read).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(_)) => break,
                                Err(_) => panic!("a read got no answer within 40 s"),
                            }
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Load {
            proxy,
            url,
            stop,
            log,
            tasks,
        }
    }

    /// Stops the load and checks c.: no write landed on a node in
    /// recovery, every committed write is there, every write got an answer.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let log = self.log.lock().unwrap().clone();
        assert!(
            log.iter().all(|w| w.error.as_deref() != Some(NO_ANSWER)),
            "a write got no answer"
        );
        assert!(
            log.iter().all(|w| !w.in_recovery),
            "a write landed on a node in recovery"
        );
        let committed: HashSet<i32> = log
            .iter()
            .filter(|w| w.error.is_none())
            .map(|w| w.id)
            .collect();
        let check = connect(&self.url).await.unwrap();
        let rows = check
            .query("/* pgsplit:leader */ SELECT id FROM pt", &[])
            .await
            .unwrap();
        let present: HashSet<i32> = rows.iter().map(|r| r.get(0)).collect();
        let missing = committed.difference(&present).count();
        println!(
            "{} committed writes, {missing} missing afterwards",
            committed.len()
        );
        assert_eq!(missing, 0, "committed writes were lost");
        self.proxy.stop().await;
    }
}

/// One writer: inserts ids from `first` until `stop`, logging each outcome;
/// reconnects after a failure.
async fn write_loop(url: String, first: i32, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Write>>>) {
    let mut client = connect(&url).await.unwrap();
    let mut id = first;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(40),
            client.query_one(
                "INSERT INTO pt VALUES ($1) RETURNING pg_is_in_recovery()",
                &[&id],
            ),
        )
        .await;
        let (error, in_recovery) = match r {
            Err(_) => (Some(NO_ANSWER.to_string()), false),
            Ok(Ok(row)) => (None, row.get::<_, bool>(0)),
            Ok(Err(e)) => (
                Some(e.as_db_error().map_or_else(
                    || e.to_string(),
                    |d| format!("{} {}", d.code().code(), d.message()),
                )),
                false,
            ),
        };
        let failed = error.is_some();
        log.lock().unwrap().push(Write {
            id,
            started,
            finished: Instant::now(),
            error,
            in_recovery,
        });
        if failed {
            client = loop {
                if let Ok(c) = connect(&url).await {
                    break c;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
        }
    }
}

/// a. `patronictl switchover` to the synchronous standby (with
/// synchronous_mode, Patroni switches over only to it) under the load.
async fn switchover(patroni: &PatroniCluster, load: &Load) -> Outcome {
    let old = patroni.leader().await;
    let new = patroni.member_with_role("sync_standby").await;
    let new_url = format!(
        "postgres://app:app-secret@{}/app?sslmode=disable",
        patroni.members[new].addr()
    );
    let began = Instant::now();
    let watcher = tokio::spawn(accepts_writes_at(new_url, began));
    let out = tokio::task::block_in_place(|| patroni.switchover(old, new));
    let new_accepts = watcher.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("patronictl: {}", out.lines().last().unwrap_or(""));
    report(&load.log, began, new_accepts, "switchover")
}

/// b. kill -9 of the leader's Patroni and postmaster under the load.
async fn leader_crash(patroni: &mut PatroniCluster, load: &Load) -> Outcome {
    let crashed = patroni.leader().await;
    let candidates: Vec<usize> = (0..3).filter(|&i| i != crashed).collect();
    let began = Instant::now();
    let watchers: Vec<_> = candidates
        .iter()
        .map(|&i| {
            tokio::spawn(accepts_writes_at(
                format!(
                    "postgres://app:app-secret@{}/app?sslmode=disable",
                    patroni.members[i].addr()
                ),
                began,
            ))
        })
        .collect();
    tokio::task::block_in_place(|| patroni.kill_member(crashed));
    // Writes that started before this could reach a backend of the dying
    // leader (the last of them just exited): those were in flight.
    let killed = Instant::now();
    let new_accepts = futures_util::future::select_all(watchers).await.0.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(&load.log, killed, new_accepts, "kill -9")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_leader_crash_under_load() {
    support::init_logging();
    let mut patroni = PatroniCluster::start().await;
    let urls: Vec<String> = patroni.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let load = Load::start(&format!(
        "kind = \"patroni\"\nurls = [{}]\npoll_interval = \"100ms\"",
        urls.join(", ")
    ))
    .await;
    let switch = switchover(&patroni, &load).await;
    // Before the crash, the cluster is whole again: a synchronous standby
    // running (Patroni fails over only to it, so no commit is lost).
    patroni
        .wait_until(Duration::from_secs(60), support::patroni::whole)
        .await;
    let crash = leader_crash(&mut patroni, &load).await;
    load.finish().await;
    switch.assert_switchover_bar();
    crash.assert_crash_bar();
}

/// 6. Patroni keeping its state in the fake apiserver (`dcs: kubernetes`):
/// Patroni itself writes the role labels and the leader ConfigMap, and
/// pgsplit follows them with the `kubernetes` source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_with_patroni_on_kubernetes() {
    support::init_logging();
    let fake = FakeApiserver::start().await;
    let patroni = PatroniCluster::start_on(Dcs::Kubernetes(&fake)).await;
    let load = Load::start(&format!(
        "kind = \"kubernetes\"\nkubeconfig = \"{}\"\nselector = \"application=patroni,cluster-name={SCOPE}\"\n\
         preset = \"patroni\"\nleader_configmap = \"{SCOPE}-leader\"",
        fake.kubeconfig().display()
    ))
    .await;
    let switch = switchover(&patroni, &load).await;
    load.finish().await;
    switch.assert_switchover_bar();
}

struct Outcome {
    failed_after_start: usize,
    resume_gap: Duration,
}

impl Outcome {
    /// 5a: no write that started after the switchover began fails; writes
    /// resume within 1 s of the new leader accepting them.
    fn assert_switchover_bar(&self) {
        assert_eq!(
            self.failed_after_start, 0,
            "switchover: writes started after it began failed"
        );
        assert!(
            self.resume_gap < Duration::from_secs(1),
            "switchover: writes resumed {:?} after the new leader accepted them",
            self.resume_gap
        );
    }

    /// 5b: only writes in flight on the dying leader fail (one per writer
    /// at most, and none that started later); resume within 1 s.
    fn assert_crash_bar(&self) {
        assert_eq!(
            self.failed_after_start, 0,
            "kill -9: writes started after it failed"
        );
        assert!(
            self.resume_gap < Duration::from_secs(1),
            "kill -9: writes resumed {:?} after the new leader accepted them",
            self.resume_gap
        );
    }
}

/// Prints and returns what happened to the writes around an event that
/// began at `began`, whose new leader accepted writes at `accepts`.
fn report(log: &Mutex<Vec<Write>>, began: Instant, accepts: Instant, what: &str) -> Outcome {
    let log = log.lock().unwrap();
    let failed_after_start = log
        .iter()
        .filter(|w| w.started >= began && w.error.is_some())
        .count();
    let failed_in_flight = log
        .iter()
        .filter(|w| w.started < began && w.finished >= began && w.error.is_some())
        .count();
    let first_ok = log
        .iter()
        .filter(|w| w.error.is_none() && w.finished >= accepts)
        .map(|w| w.finished)
        .min()
        .unwrap_or(accepts + Duration::from_secs(3600));
    let resume_gap = first_ok.saturating_duration_since(accepts);
    let errors: Vec<&String> = log
        .iter()
        .filter(|w| w.started + Duration::from_secs(5) >= began)
        .filter_map(|w| w.error.as_ref())
        .take(5)
        .collect();
    println!(
        "{what}: new leader accepted writes {:?} after it began; writes through pgsplit resumed {resume_gap:?} after that; failed: {failed_in_flight} in flight, {failed_after_start} started after it began {errors:?}",
        accepts.saturating_duration_since(began)
    );
    Outcome {
        failed_after_start,
        resume_gap,
    }
}
