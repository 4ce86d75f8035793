//! A fake Kubernetes apiserver for tests: loopback HTTP/1.1 that speaks
//! the real list/watch protocol well enough for kube's watcher and
//! Patroni's Kubernetes DCS. It is a fake, not Kubernetes: no admission,
//! no auth, no schema; objects are JSON.
//!
//! What it does: list, get, create (POST), replace (PUT), merge patch
//! (PATCH, with resourceVersion preconditions answering 409), delete, and
//! delete of a collection, for pods, configmaps, endpoints, services and
//! endpointslices; watches with one global increasing resourceVersion,
//! label and field selectors with transitions (ADDED when an object starts
//! to match, DELETED when it stops), bookmarks, timeoutSeconds, and 410
//! Gone for a resourceVersion older than the last compaction.
//!
//! What tests can do to it: change objects directly, compact the history,
//! drop every open watch stream, answer the next requests with 500, and
//! stop and start again on the same port with the same objects (an
//! apiserver restart).

pub mod store;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use store::{type_of, Change, Filter, Key, Refusal, Selector, Store};

/// Counters tests can assert on.
#[derive(Debug, Default)]
pub struct Stats {
    pub lists: AtomicU64,
    pub watches: AtomicU64,
    pub bookmarks: AtomicU64,
    pub gone: AtomicU64,
    pub failed: AtomicU64,
}

struct Inner {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    fail_next: AtomicU32,
    /// Cancelled to drop every open watch stream; replaced after.
    drop_watches: Mutex<CancellationToken>,
    bookmark_every: Duration,
    stats: Stats,
    /// Connections being served.
    live: std::sync::atomic::AtomicUsize,
}

/// The fake apiserver; stops when dropped.
pub struct FakeApiserver {
    addr: SocketAddr,
    inner: Arc<Inner>,
    running: Option<CancellationToken>,
    dir: PathBuf,
}

impl FakeApiserver {
    /// Starts on a free loopback port.
    pub async fn start() -> FakeApiserver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dir = std::env::temp_dir().join(format!("pgsplit-fake-apiserver-{}", addr.port()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::default()),
            changes: broadcast::channel(4096).0,
            fail_next: AtomicU32::new(0),
            drop_watches: Mutex::new(CancellationToken::new()),
            bookmark_every: Duration::from_millis(500),
            stats: Stats::default(),
            live: std::sync::atomic::AtomicUsize::new(0),
        });
        let mut server = FakeApiserver {
            addr,
            inner,
            running: None,
            dir,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        self.running = Some(stop.clone());
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                let socket = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => continue,
                    },
                };
                let inner = inner.clone();
                let stop = stop.clone();
                inner.live.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve_connection(socket, inner.clone()) => {}
                    }
                    inner.live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at the fake (namespace `default`) and
    /// returns its path.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    fn key(resource: &str, namespace: &str, name: &str) -> Key {
        Key {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Creates or replaces an object (as an operator or kubelet would).
    pub fn apply(&self, resource: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        self.inner
            .write(|s| s.replace(Self::key(resource, namespace, &name), object))
            .expect("apply");
    }

    /// Merge-patches an object.
    pub fn patch(&self, resource: &str, namespace: &str, name: &str, patch: Value) {
        self.inner
            .write(|s| s.patch(Self::key(resource, namespace, name), &patch))
            .expect("patch");
    }

    /// Deletes an object.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) {
        self.inner
            .write(|s| s.delete(Self::key(resource, namespace, name)))
            .expect("delete");
    }

    /// The stored object.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.inner.store.lock().expect("store");
        store.get(&Self::key(resource, namespace, name)).cloned()
    }

    /// Forgets history: watches resuming from an older version get 410.
    pub fn compact(&self) {
        self.inner.store.lock().expect("store").compact();
    }

    /// Ends every open watch stream abruptly (no final chunk).
    pub fn drop_watches(&self) {
        let mut token = self.inner.drop_watches.lock().expect("token");
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Answers the next `n` requests with 500.
    pub fn fail_next(&self, n: u32) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    /// Stops listening and closes every connection (returning once they
    /// are closed: nothing more reaches a client after this); objects stay.
    pub async fn stop(&mut self) {
        self.halt();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.inner.live.load(Ordering::SeqCst) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "connections did not close"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn halt(&mut self) {
        if let Some(stop) = self.running.take() {
            stop.cancel();
        }
    }

    /// Listens again on the same port after [`stop`](Self::stop).
    pub async fn start_again(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.halt();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Inner {
    /// Applies a write under the store's lock and tells the watches, in
    /// resourceVersion order.
    fn write(
        &self,
        f: impl FnOnce(&mut Store) -> Result<Change, Refusal>,
    ) -> Result<Value, Refusal> {
        let mut store = self.store.lock().expect("store");
        let change = f(&mut store)?;
        let object = change
            .new
            .clone()
            .or_else(|| change.old.clone())
            .unwrap_or(Value::Null);
        let _ = self.changes.send(change);
        Ok(object)
    }
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        body,
    })
}

/// Percent-decoding of a query component ('+' is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (namespace, resource, name) from an API path.
fn route(path: &str) -> Option<(String, String, Option<String>)> {
    let rest = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/apis/discovery.k8s.io/v1/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["namespaces", ns, resource] => Some((ns.to_string(), resource.to_string(), None)),
        ["namespaces", ns, resource, name] => {
            Some((ns.to_string(), resource.to_string(), Some(name.to_string())))
        }
        _ => None,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn respond(
    socket: &mut BufReader<TcpStream>,
    code: u16,
    body: &Value,
) -> std::io::Result<()> {
    let text = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        if code < 300 { "OK" } else { "Error" },
        text.len()
    );
    let stream = socket.get_mut();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

async fn serve_connection(socket: TcpStream, inner: Arc<Inner>) {
    let mut socket = BufReader::new(socket);
    while let Some(request) = read_request(&mut socket).await {
        if handle(&mut socket, &inner, request).await.is_err() {
            return;
        }
    }
}

/// Answers one request; an error closes the connection.
async fn handle(
    socket: &mut BufReader<TcpStream>,
    inner: &Arc<Inner>,
    r: Request,
) -> std::io::Result<()> {
    if inner
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        inner.stats.failed.fetch_add(1, Ordering::Relaxed);
        return respond(
            socket,
            500,
            &status(500, "InternalError", "fake apiserver: injected failure"),
        )
        .await;
    }
    let Some((namespace, resource, name)) = route(&r.path) else {
        return respond(
            socket,
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        )
        .await;
    };
    let Some((api_version, kind)) = type_of(&resource) else {
        return respond(socket, 404, &status(404, "NotFound", "unknown resource")).await;
    };
    let filter = Filter {
        namespace: namespace.clone(),
        labels: Selector::parse(r.query.get("labelSelector").map_or("", String::as_str)),
        fields: Selector::parse(r.query.get("fieldSelector").map_or("", String::as_str)),
    };
    let body: Value = if r.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&r.body) {
            Ok(v) => v,
            Err(e) => {
                return respond(socket, 400, &status(400, "BadRequest", &e.to_string())).await
            }
        }
    };
    let key = |name: &str| Key {
        resource: resource.clone(),
        namespace: namespace.clone(),
        name: name.to_string(),
    };
    let result = match (r.method.as_str(), name) {
        ("GET", None)
            if r.query
                .get("watch")
                .is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1") =>
        {
            inner.stats.watches.fetch_add(1, Ordering::Relaxed);
            return watch(socket, inner, &r, filter, api_version, kind).await;
        }
        ("GET", None) => {
            inner.stats.lists.fetch_add(1, Ordering::Relaxed);
            let store = inner.store.lock().expect("store");
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|(k, o)| k.resource == resource && filter.matches(&k.namespace, o))
                .map(|(_, o)| o.clone())
                .collect();
            Ok(
                json!({"apiVersion": api_version, "kind": format!("{kind}List"),
                      "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
            )
        }
        ("GET", Some(name)) => {
            let store = inner.store.lock().expect("store");
            store
                .get(&key(&name))
                .cloned()
                .ok_or_else(|| Refusal(404, "NotFound", format!("{resource} \"{name}\" not found")))
        }
        ("POST", None) => match body.pointer("/metadata/name").and_then(Value::as_str) {
            Some(name) => {
                let k = key(name);
                inner.write(|s| s.create(k, body.clone()))
            }
            None => Err(Refusal(422, "Invalid", "metadata.name is required".into())),
        },
        ("PUT", Some(name)) => inner.write(|s| s.replace(key(&name), body.clone())),
        ("PATCH", Some(name)) => inner.write(|s| s.patch(key(&name), &body)),
        ("DELETE", Some(name)) => inner.write(|s| s.delete(key(&name))),
        ("DELETE", None) => {
            let names: Vec<String> = {
                let store = inner.store.lock().expect("store");
                store
                    .objects
                    .iter()
                    .filter(|(k, o)| k.resource == resource && filter.matches(&k.namespace, o))
                    .map(|(k, _)| k.name.clone())
                    .collect()
            };
            for name in names {
                let _ = inner.write(|s| s.delete(key(&name)));
            }
            Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))
        }
        _ => Err(Refusal(
            405,
            "MethodNotAllowed",
            format!("{} is not supported here", r.method),
        )),
    };
    match result {
        Ok(object) => respond(socket, 200, &object).await,
        Err(Refusal(code, reason, message)) => {
            respond(socket, code, &status(code, reason, &message)).await
        }
    }
}

async fn chunk(socket: &mut BufReader<TcpStream>, event: &Value) -> std::io::Result<()> {
    let mut line = event.to_string();
    line.push('\n');
    let framed = format!("{:x}\r\n{line}\r\n", line.len());
    let stream = socket.get_mut();
    stream.write_all(framed.as_bytes()).await?;
    stream.flush().await
}

/// A watch: replays history after the asked resourceVersion (or ADDED for
/// everything matching when none is given), then follows changes until
/// timeoutSeconds, sending bookmarks when asked to.
async fn watch(
    socket: &mut BufReader<TcpStream>,
    inner: &Arc<Inner>,
    r: &Request,
    filter: Filter,
    api_version: &str,
    kind: &str,
) -> std::io::Result<()> {
    let from: u64 = r
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = r
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let bookmarks = r.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let dropped = inner.drop_watches.lock().expect("token").clone();
    let resource = route(&r.path).map(|(_, res, _)| res).unwrap_or_default();
    socket
        .get_mut()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let start = {
        let store = inner.store.lock().expect("store");
        if from != 0 && from < store.compacted {
            None
        } else {
            Some(start_watch(&store, inner, &filter, &resource, from))
        }
    };
    let Some((mut changes, backlog, mut last)) = start else {
        inner.stats.gone.fetch_add(1, Ordering::Relaxed);
        let gone = status(
            410,
            "Expired",
            &format!("too old resource version: {from} (compacted)"),
        );
        chunk(socket, &json!({"type": "ERROR", "object": gone})).await?;
        return socket.get_mut().write_all(b"0\r\n\r\n").await;
    };
    for (kind_of_event, object) in backlog {
        chunk(socket, &json!({"type": kind_of_event, "object": object})).await?;
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(inner.bookmark_every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return socket.get_mut().write_all(b"0\r\n\r\n").await,
            _ = dropped.cancelled() => {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "dropped"));
            }
            _ = tick.tick(), if bookmarks => {
                inner.stats.bookmarks.fetch_add(1, Ordering::Relaxed);
                let mark = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                    "metadata": {"resourceVersion": last.to_string()}}});
                chunk(socket, &mark).await?;
            }
            change = changes.recv() => {
                let Ok(change) = change else {
                    return Err(std::io::Error::other("watch fell behind"));
                };
                if change.rv <= last {
                    continue;
                }
                last = change.rv;
                if change.resource != resource {
                    continue;
                }
                if let Some((t, object)) = filter.event_for(&change) {
                    chunk(socket, &json!({"type": t, "object": object})).await?;
                }
            }
        }
    }
}

/// Under the store's lock: the events a watch from `from` replays, its
/// subscription to later changes, and the version it starts after.
fn start_watch(
    store: &Store,
    inner: &Inner,
    filter: &Filter,
    resource: &str,
    from: u64,
) -> (broadcast::Receiver<Change>, Vec<(String, Value)>, u64) {
    let backlog: Vec<(String, Value)> = if from == 0 {
        store
            .objects
            .iter()
            .filter(|(k, o)| k.resource == resource && filter.matches(&k.namespace, o))
            .map(|(_, o)| ("ADDED".to_string(), o.clone()))
            .collect()
    } else {
        store
            .history
            .iter()
            .filter(|c| c.rv > from && c.resource == resource)
            .filter_map(|c| filter.event_for(c).map(|(t, o)| (t.to_string(), o.clone())))
            .collect()
    };
    (inner.changes.subscribe(), backlog, store.rv)
}
