//! The live side of every environment: its operation lock, its status and running
//! instance, and its relay hub, by id. Records are the store's; this is what only
//! lives while the host runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Status;
use super::progress::StartProgress;
use crate::engine::ProviderHandle;
use crate::logs::EnvLogs;
use crate::relay::{Hub, ProviderTypes, Relay};
use crate::sync::MutexExt;

/// What changes while an environment runs.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) status: Status,
    /// The current start, or the last one if it failed; none once stopped.
    pub(super) start: Option<StartProgress>,
    pub(super) provider: Option<ProviderHandle>,
    /// Cancelled when the running instance is taken down (ends its supervision).
    pub(super) supervision: Option<CancellationToken>,
    pub(super) metadata: BTreeMap<String, String>,
    /// Policy restarts in a row (reset after a stable period).
    pub(super) attempt: u32,
    pub(super) last_failure: Option<Instant>,
}

/// One environment's live side.
#[derive(Debug)]
pub(super) struct Env {
    pub(super) id: String,
    /// Serialises operations (start, stop, delete) on this environment.
    pub(super) op: tokio::sync::Mutex<()>,
    /// Fired once when the environment is being deleted: operations in flight give up.
    pub(super) deleting: CancellationToken,
    /// Fired (and replaced) when the environment moves to another owner, closing
    /// the apps admitted before.
    owner_moved: Mutex<CancellationToken>,
    live: Mutex<Live>,
    pub(super) hub: Arc<Hub>,
    /// The message types its provider answers: the running instance's, or, while none
    /// runs, the loaded provider's (what the next start runs).
    pub(super) provider_types: Arc<ProviderTypes>,
}

impl Env {
    fn new(id: &str, hub: Arc<Hub>) -> Self {
        Self {
            id: id.to_owned(),
            op: tokio::sync::Mutex::new(()),
            deleting: CancellationToken::new(),
            owner_moved: Mutex::new(CancellationToken::new()),
            live: Mutex::new(Live::default()),
            hub,
            provider_types: Arc::default(),
        }
    }

    pub(super) fn live(&self) -> MutexGuard<'_, Live> {
        self.live.locked()
    }

    /// Fires when the environment next moves to another owner.
    pub(super) fn owner_moves(&self) -> CancellationToken {
        self.owner_moved.locked().clone()
    }

    /// The environment moved to another owner: apps admitted before are told.
    pub(super) fn moved_owner(&self) {
        let before = std::mem::replace(&mut *self.owner_moved.locked(), CancellationToken::new());
        before.cancel();
    }
}

/// Every environment's live side, and the relay their hubs belong to.
#[derive(Debug)]
pub(super) struct Environments {
    relay: Relay,
    envs: Mutex<HashMap<String, Arc<Env>>>,
    /// Each known environment has a log there; a forgotten one's goes.
    logs: Arc<EnvLogs>,
}

impl Environments {
    /// The relay's limits.
    pub(super) fn relay_config(&self) -> &crate::config::RelayConfig {
        self.relay.config()
    }

    /// The live sides of environments `ids`, their hubs in `relay`, their logs in `logs`.
    pub(super) fn new(
        relay: Relay,
        logs: Arc<EnvLogs>,
        ids: impl IntoIterator<Item = String>,
    ) -> Self {
        let envs = ids
            .into_iter()
            .map(|id| {
                logs.track(&id);
                (id.clone(), Arc::new(Env::new(&id, relay.hub(&id))))
            })
            .collect();
        Self {
            relay,
            envs: Mutex::new(envs),
            logs,
        }
    }

    /// The environments' logs.
    pub(super) fn logs(&self) -> &Arc<EnvLogs> {
        &self.logs
    }

    /// Environment `id`, if the host knows it.
    pub(super) fn get(&self, id: &str) -> Option<Arc<Env>> {
        self.envs.locked().get(id).cloned()
    }

    /// Environment `id`, created (with its hub) if the host did not know it yet.
    pub(super) fn add(&self, id: &str) -> Arc<Env> {
        let mut envs = self.envs.locked();
        self.logs.track(id);
        envs.entry(id.to_owned())
            .or_insert_with(|| Arc::new(Env::new(id, self.relay.hub(id))))
            .clone()
    }

    /// A live side for deleted environment `id` that is not registered: no peer,
    /// list or log reaches it (a retried removal's instance runs on it).
    pub(super) fn detached(&self, id: &str) -> Arc<Env> {
        Arc::new(Env::new(id, self.relay.detached_hub(id)))
    }

    /// Forgets environment `id` and removes its log; its hub stays open until
    /// [`Self::close_hub`].
    pub(super) fn forget(&self, id: &str) -> Option<Arc<Env>> {
        self.logs.remove(id);
        self.envs.locked().remove(id)
    }

    /// Closes the hub of a forgotten environment, telling its peers `reason`.
    pub(super) fn close_hub(&self, id: &str, reason: &str) {
        self.relay.remove(id, reason);
    }

    /// Every environment the host knows.
    pub(super) fn all(&self) -> Vec<Arc<Env>> {
        self.envs.locked().values().cloned().collect()
    }
}
