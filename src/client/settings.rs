//! The config and read/write classifier one session works with, kept at
//! hand so that the hot path reads them without touching the shared
//! `ArcSwap`s: each of those loads costs some fifty instructions, and a
//! transaction needed five. A reload bumps [`Shared::settings_epoch`] after
//! it has stored both; a session compares that one counter once per batch
//! of client input and takes the new pair only when it moved.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Config;
use crate::proxy::Shared;
use crate::route::classify::Classifier;

/// A session's view of the config and classifier in force.
pub struct Settings {
    epoch: u64,
    pub config: Arc<Config>,
    pub classifier: Arc<Classifier>,
}

impl Settings {
    /// What is in force now.
    pub fn new(shared: &Shared) -> Self {
        let epoch = shared.settings_epoch.load(Ordering::Acquire);
        Settings {
            epoch,
            config: Arc::clone(&shared.config()),
            classifier: shared.classifier.load_full(),
        }
    }

    /// Takes what a reload put in force since the last look.
    pub fn refresh(&mut self, shared: &Shared) {
        if shared.settings_epoch.load(Ordering::Acquire) != self.epoch {
            *self = Settings::new(shared);
        }
    }

    /// Changes with every reload: what a session classified is kept under
    /// it (see `ClientStatements::recent_summary`).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reload_is_picked_up_at_the_next_refresh_only() {
        let text = "[proxy]\nlisten='127.0.0.1:0'\nadmin_listen='127.0.0.1:0'\n\
                    [[users]]\nname='a'\npassword='b'\n\
                    [[clusters]]\nname='m'\n[clusters.discovery]\nkind='static'\nleader='127.0.0.1:1'\n";
        let mut config = Config::parse(text, "t", std::iter::empty()).expect("config");
        let proxy = crate::proxy::Proxy::start(config.clone())
            .await
            .expect("start");
        let shared = proxy.shared();
        let reads = |s: &Settings| s.classifier.classify("SELECT my_writer()", true).only_reads;
        let mut settings = Settings::new(shared);
        assert_eq!(settings.config.proxy.pool_size, 20);
        assert!(reads(&settings));

        config.proxy.pool_size = 7;
        config.routing.write_functions = vec!["my_writer".into()];
        shared.apply_config(config);
        assert_eq!(settings.config.proxy.pool_size, 20, "kept until refreshed");
        assert!(reads(&settings));
        let before = settings.epoch();
        settings.refresh(shared);
        assert_ne!(settings.epoch(), before);
        assert_eq!(settings.config.proxy.pool_size, 7);
        assert!(!reads(&settings), "the new write function is known");
        proxy.stop().await;
    }
}
