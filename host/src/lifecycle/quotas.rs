//! Each user's limits (`[tenancy]`): how many environments they may own and have
//! running, and how many long-lived connections they may hold (counted in
//! `tenancy/connections.rs`, checked here against the limit in force). A change that could take a user past one is checked and made while holding
//! that user's admission lock, so concurrent requests cannot both pass a check that
//! only one of them fits (100 parallel creates at a limit of 10 make exactly 10). A
//! user without limits is not admitted one request at a time: nothing is counted for
//! them, and serialising their creates would make each wait for the one before it to
//! be durable (a journal sync each) instead of sharing a sync with it. In a cluster
//! the user's key in the cluster is held as well, from before the check until the
//! change is in the cluster's records, so hosts admitting at once cannot overshoot
//! either (`cluster::admissions`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::OwnedMutexGuard;

use super::{LifecycleError, Manager};
use crate::cluster::{Admission, Cluster};
use crate::config::TenancyConfig;
use crate::store::{DesiredState, Store};
use crate::sync::{MutexExt, RwLockExt};
use crate::tenancy::{AtLimit, HeldConnection, Principal, UserConnections};

/// A user's admission for a change checked against their limits: this host's lock
/// and, in a cluster, the user's key there ([`Admission`]). Held from before the
/// check until the change is made (and, in a cluster, shared).
pub(super) struct Admitted {
    /// Held for as long as this is.
    _here: OwnedMutexGuard<()>,
    cluster: Option<InCluster>,
}

impl Admitted {
    /// This host's lock alone, for a change no other host need know of first.
    pub(super) fn here(guard: OwnedMutexGuard<()>) -> Self {
        Self {
            _here: guard,
            cluster: None,
        }
    }
}

/// The user's admission key in the cluster, and what tells when this host's
/// changes are in the cluster's records.
pub(super) struct InCluster {
    cluster: Cluster,
    store: Arc<Store>,
    admission: Admission,
}

impl InCluster {
    /// Lets the key go once every change this host made so far is in the cluster's
    /// records, so the next check anywhere counts them.
    async fn leave(self) {
        if !self.cluster.written(self.store.edited()).await {
            tracing::warn!(
                "cluster: a change counted against a user's limits did not reach NATS in time; the next one is admitted without it"
            );
        }
        drop(self.admission);
    }
}

impl Drop for Admitted {
    /// A refusal, or a request given up half-way (its client went away): the key
    /// is let go in the background, still only once what was made here is shared.
    fn drop(&mut self) {
        if let Some(in_cluster) = self.cluster.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(in_cluster.leave());
        }
    }
}

/// The limits, and one admission lock per user.
#[derive(Debug, Default)]
pub(super) struct Quotas {
    /// Swapped by a reload of `tether.toml`.
    config: RwLock<TenancyConfig>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The long-lived connections each user holds on this host.
    connections: Arc<UserConnections>,
}

impl Quotas {
    pub(super) fn new(config: TenancyConfig) -> Self {
        Self {
            config: RwLock::new(config),
            locks: Mutex::default(),
            connections: Arc::default(),
        }
    }

    /// Puts reloaded limits in force for the next check.
    pub(super) fn set(&self, config: TenancyConfig) {
        *self.config.write_locked() = config;
    }

    /// Holds `owner`'s admission on this host until the guard drops: check, then
    /// change, then drop. `None` (nothing held) when `owner` has no limit and the
    /// change is not `counted` otherwise (by a template's `max_per_user`).
    pub(super) async fn admit(&self, owner: &str, counted: bool) -> Option<OwnedMutexGuard<()>> {
        let quota = self.config.read_locked().quota_of(owner);
        if !counted && quota.max_environments.is_none() && quota.max_running.is_none() {
            return None;
        }
        let lock = {
            let mut locks = self.locks.locked();
            // Forget users nobody is admitting right now, so the map stays small.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(owner.to_owned()).or_default().clone()
        };
        Some(lock.lock_owned().await)
    }

    /// `QuotaExceeded` if `owner` may not have one more environment (`running`: one
    /// more running one too).
    pub(super) fn check_new(
        &self,
        store: &Store,
        owner: &str,
        running: bool,
    ) -> Result<(), LifecycleError> {
        let quota = self.config.read_locked().quota_of(owner);
        if let Some(limit) = quota.max_environments {
            let used = store.count(|r| r.owner == owner);
            exceeded("max_environments", owner, limit, used)?;
        }
        if running {
            self.check_running(store, owner, None)?;
        }
        Ok(())
    }

    /// `ProviderNotAllowed` if `owner` may not use `provider` (create or start).
    pub(super) fn check_provider(&self, owner: &str, provider: &str) -> Result<(), LifecycleError> {
        let quota = self.config.read_locked().quota_of(owner);
        if quota.allows_provider(provider) {
            return Ok(());
        }
        let allowed = (quota.providers.as_deref())
            .map(|p| p.iter().map(String::as_str).collect::<Vec<_>>().join(", "))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "none".to_owned());
        Err(LifecycleError::ProviderNotAllowed {
            owner: owner.to_owned(),
            provider: crate::untrusted::named(provider),
            allowed,
        })
    }

    /// `QuotaExceeded` if `owner` may not have one more running environment besides
    /// `id` (which is not counted: asking a running one to run again is no change).
    pub(super) fn check_running(
        &self,
        store: &Store,
        owner: &str,
        id: Option<&str>,
    ) -> Result<(), LifecycleError> {
        if let Some(limit) = self.config.read_locked().quota_of(owner).max_running {
            let used = store.count(|r| {
                r.owner == owner
                    && r.desired_state == DesiredState::Running
                    && id.is_none_or(|id| r.id != id)
            });
            exceeded("max_running", owner, limit, used)?;
        }
        Ok(())
    }
}

impl Manager {
    /// Counts one more long-lived connection of `who`'s user (an app socket, an
    /// events stream, a followed log) until the guard drops; `QuotaExceeded` when
    /// the user holds their `max_connections` on this host already. The limit is
    /// the one in force now (a reload applies to the next connection; those open
    /// stay open, counted).
    pub(crate) fn hold_connection(
        &self,
        who: &Principal,
    ) -> Result<HeldConnection, LifecycleError> {
        let user = who.user();
        let quotas = &self.shared.quotas;
        let limit = quotas.config.read_locked().quota_of(user).max_connections;
        quotas
            .connections
            .hold(user, limit)
            .map_err(|AtLimit { limit, used }| {
                tracing::info!(
                    user,
                    limit,
                    "connection refused: the user is at max_connections"
                );
                LifecycleError::QuotaExceeded {
                    quota: "max_connections",
                    owner: user.to_owned(),
                    limit,
                    used,
                }
            })
    }

    /// Connections refused since the host started because their user was at
    /// `max_connections`.
    pub(crate) fn connections_refused_at_user_limit(&self) -> u64 {
        self.shared.quotas.connections.refused()
    }

    /// Holds `owner`'s admission for a change checked against their limits (and a
    /// template's `max_per_user` when `counted`): this host's lock and, in a cluster,
    /// the user's key there, once this host has every record change the cluster
    /// admitted before (two hosts never both admit the last change that fits).
    /// `None` when nothing is counted. Give it to [`Manager::admitted`] once the
    /// change is made; dropped on the way (a refusal), it lets go by itself.
    pub(super) async fn admit(
        &self,
        owner: &str,
        counted: bool,
    ) -> Result<Option<Admitted>, LifecycleError> {
        // On one host a template's cap is kept by its reservations (`provision`),
        // which let one user's connects share a journal sync; across hosts only the
        // cluster's admission keeps it.
        let counted = counted && self.cluster().is_some();
        let Some(here) = self.shared.quotas.admit(owner, counted).await else {
            return Ok(None);
        };
        let cluster = match self.cluster() {
            Some(cluster) => Some(InCluster {
                admission: (cluster.admit(owner).await)
                    .map_err(|e| LifecycleError::ClusterUnavailable(e.to_string()))?,
                cluster: cluster.clone(),
                store: self.shared.store.clone(),
            }),
            None => None,
        };
        Ok(Some(Admitted {
            _here: here,
            cluster,
        }))
    }

    /// Lets the next change of the user in, once the change admitted is made here
    /// and (in a cluster) the cluster has it, so the next check there counts it.
    pub(super) async fn admitted(&self, admitted: Option<Admitted>) {
        let Some(mut admitted) = admitted else {
            return;
        };
        if let Some(in_cluster) = admitted.cluster.take() {
            in_cluster.leave().await;
        }
        // Only now: this host's next change of the user waits here, not in NATS.
        drop(admitted);
    }
}

fn exceeded(
    quota: &'static str,
    owner: &str,
    limit: usize,
    used: usize,
) -> Result<(), LifecycleError> {
    if used < limit {
        return Ok(());
    }
    Err(LifecycleError::QuotaExceeded {
        quota,
        owner: owner.to_owned(),
        limit,
        used,
    })
}
