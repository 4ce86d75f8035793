//! Live reload (SIGHUP, the console's RELOAD, a change of the config
//! file): the file is read and validated again; an invalid one is refused
//! with a log line and the running config stays. A valid one applies
//! without dropping clients:
//! - users and passwords: new logins use them; pools of a user whose
//!   password changed are renewed (idle server connections close now,
//!   lent ones after their transaction);
//! - pool sizes and server timeouts: every pool is renewed the same way;
//! - limits, timeouts, routing settings: read per login or per request,
//!   so they apply at once (write functions rebuild the classifier);
//! - discovery: clusters whose settings changed restart their source,
//!   added and removed clusters come and go; the probes restart;
//! - `listen`, `admin_listen`, TLS files and logging need a restart: a change is
//!   logged and the running values stay.

use std::sync::Arc;

use crate::config::Config;
use crate::proxy::Shared;

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("pgsplit was started without a config file")]
    NoFile,
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
}

/// Reads the config file again and applies it. The file (and any
/// `password_file`) is read on the blocking pool, not on the event loop
/// that serves clients: a config on a slow volume must not stall them.
pub async fn reload(shared: &Shared) -> Result<(), ReloadError> {
    let old = Arc::clone(&shared.config());
    let Some(path) = old.source.clone() else {
        return Err(ReloadError::NoFile);
    };
    let mut new = match read_off_loop(move || Config::load(&path)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; the running config stays");
            shared.metrics.reloaded("refused");
            return Err(e.into());
        }
    };
    keep_restart_only_settings(&old, &mut new);
    shared.apply_config(new);
    shared.metrics.reloaded("ok");
    Ok(())
}

/// Reloads when the config file changes, until `stop`. The directory is
/// watched, not the file: Kubernetes updates a mounted ConfigMap by
/// swapping a symlink (`..data`) beside it. Events are gathered for
/// 200 ms, and a reload happens only when the file's bytes changed.
/// Events that only say a file was opened or read are ignored
/// (`may_change_files`): the check itself reads the file.
pub async fn watch_file(
    shared: std::sync::Arc<Shared>,
    path: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
) {
    use notify::Watcher;
    let Some(dir) = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            d
        }
    }) else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| may_change_files(&e.kind)) {
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; SIGHUP and RELOAD still work");
            return;
        }
    };
    if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; SIGHUP and RELOAD still work");
        return;
    }
    let read = || {
        let path = path.clone();
        read_off_loop(move || std::fs::read(path).ok())
    };
    let mut last = read().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            event = rx.recv() => if event.is_none() { return },
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let now = read().await;
        if now.is_some() && now != last {
            last = now;
            tracing::info!(file = %path.display(), "config file changed; reloading");
            let _ = reload(&shared).await;
        }
    }
}

/// Runs the file reading `read` on tokio's blocking pool.
async fn read_off_loop<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(read).await {
        Ok(value) => value,
        // Only a panic in `read` ends the task early: pass it on.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Whether an event in the config directory may mean a changed file.
/// inotify also reports a file opened, read or closed unwritten; reading
/// the config file to compare it made such an event, which made another
/// read 200 ms later, for as long as pgsplit ran.
fn may_change_files(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Settings only a restart can change keep their running values.
fn keep_restart_only_settings(old: &Config, new: &mut Config) {
    let (o, n) = (&old.proxy, &mut new.proxy);
    let mut kept = Vec::new();
    if o.listen != n.listen {
        n.listen = o.listen.clone();
        kept.push("listen");
    }
    if o.admin_listen != n.admin_listen {
        n.admin_listen = o.admin_listen.clone();
        kept.push("admin_listen");
    }
    if (&o.tls_cert_file, &o.tls_key_file, &o.server_tls_ca_file)
        != (&n.tls_cert_file, &n.tls_key_file, &n.server_tls_ca_file)
        || o.server_tls_mode != n.server_tls_mode
    {
        n.tls_cert_file = o.tls_cert_file.clone();
        n.tls_key_file = o.tls_key_file.clone();
        n.server_tls_ca_file = o.server_tls_ca_file.clone();
        n.server_tls_mode = o.server_tls_mode;
        kept.push("TLS settings");
    }
    if (o.log_format, &o.log_level) != (n.log_format, &n.log_level) {
        n.log_format = o.log_format;
        n.log_level = o.log_level.clone();
        kept.push("log_format and log_level");
    }
    if (o.worker_threads, o.yield_before_sleep) != (n.worker_threads, n.yield_before_sleep) {
        n.worker_threads = o.worker_threads;
        n.yield_before_sleep = o.yield_before_sleep;
        kept.push("worker_threads and yield_before_sleep");
    }
    if !kept.is_empty() {
        tracing::warn!(settings = ?kept, "these settings change only with a restart; the running values stay");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_is_no_change_and_writing_one_is() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
        use notify::EventKind;
        for quiet in [
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!may_change_files(&quiet), "{quiet:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert!(may_change_files(&change), "{change:?}");
        }
    }

    #[test]
    fn listen_addresses_keep_their_running_values() {
        let text = "[proxy]\nlisten='127.0.0.1:1'\n[[users]]\nname='a'\npassword='b'\n[[clusters]]\nname='m'\n[clusters.discovery]\nkind='static'\nleader='h:1'\n";
        let old = Config::parse(text, "t", std::iter::empty()).unwrap();
        let mut new = Config::parse(
            &text
                .replace("127.0.0.1:1", "127.0.0.1:2")
                .replace("name='a'", "name='c'"),
            "t",
            std::iter::empty(),
        )
        .unwrap();
        new.proxy.worker_threads = 4;
        new.proxy.yield_before_sleep = true;
        keep_restart_only_settings(&old, &mut new);
        assert_eq!(new.proxy.listen, "127.0.0.1:1");
        assert_eq!(new.proxy.worker_threads, 1, "the runtime is built once");
        assert!(!new.proxy.yield_before_sleep, "the runtime is built once");
        assert_eq!(new.users[0].name, "c", "other settings change");
    }
}
