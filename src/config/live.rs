//! The running configuration, swappable by a reload (SIGHUP) while requests are served.
//!
//! Readers take a cheap snapshot ([`LiveConfig::current`]) and use it for the whole request,
//! so a reload never changes the rules in the middle of one IPN. The lock is held only to
//! clone or replace the `Arc`, never across an `.await`.

use std::sync::{Arc, RwLock};

use super::Config;

#[derive(Debug, Clone)]
pub struct LiveConfig(Arc<RwLock<Arc<Config>>>);

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> Self {
        LiveConfig(Arc::new(RwLock::new(config)))
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Config> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `config` in force for every later snapshot.
    pub fn replace(&self, config: Arc<Config>) {
        match self.0.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}
