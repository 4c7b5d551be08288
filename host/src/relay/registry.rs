//! Every environment's hub, by environment id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::hub::Hub;
use crate::config::RelayConfig;
use crate::sync::MutexExt;

/// Every hub, by environment id.
#[derive(Debug)]
pub struct Relay {
    config: Arc<RelayConfig>,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
}

impl Relay {
    /// A relay whose hubs use `config`.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config: Arc::new(config),
            hubs: Mutex::default(),
        }
    }

    /// The limits every hub keeps.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The hub of `env_id`, created on first use.
    pub fn hub(&self, env_id: &str) -> Arc<Hub> {
        let mut hubs = self.hubs.locked();
        hubs.entry(env_id.to_owned())
            .or_insert_with(|| Arc::new(Hub::new(env_id.to_owned(), self.config.clone())))
            .clone()
    }

    /// A hub for `env_id` outside the registry, so no peer can reach it: for an
    /// instance that removes a deleted environment's resource.
    pub fn detached_hub(&self, env_id: &str) -> Arc<Hub> {
        Arc::new(Hub::new(env_id.to_owned(), self.config.clone()))
    }

    /// Closes and forgets the hub of `env_id`.
    pub fn remove(&self, env_id: &str, reason: &str) {
        let hub = self.hubs.locked().remove(env_id);
        if let Some(hub) = hub {
            hub.close(reason);
        }
    }
}
