//! Cluster mode in the lifecycle: an environment runs on the host holding its lease,
//! other hosts' record changes are applied like outside edits, a lost lease stops
//! the instance here, and an orphan (its host died) is started here if this host
//! wins its lease. Single-host mode has no cluster and none of this runs.

use tokio::sync::mpsc;
use tracing::Instrument;

use super::driver::Driver;
use super::envs::Env;
use super::workspaces;
use super::{LifecycleError, Manager, Status};
use crate::cluster::{Abandoned, Cluster, ClusterError, ClusterEvent};
use crate::config::ClusterRelay;
use crate::store::{DesiredState, Record, StoreError};

/// Who removes a deleted environment's resource ([`Manager::leave_removal`]).
pub(super) struct Removal {
    /// This host's provider does.
    pub(super) here: bool,
    /// The choice is noted in the cluster, to be cleared once the removal is done.
    pub(super) noted: bool,
}

impl Manager {
    /// Starts the cluster's sync (the records are read from the cluster first) and
    /// applies what it reports until shutdown.
    pub(crate) async fn join_cluster(&self) -> Result<(), ClusterError> {
        let Some(cluster) = self.shared.driver.shared.cluster.clone() else {
            return Ok(());
        };
        let events = cluster.start(self.shared.store.clone()).await?;
        let this = self.clone();
        self.shared.driver.spawn(
            async move {
                tokio::select! {
                    _ = this.shared.closing.cancelled() => {}
                    _ = this.follow_cluster(events) => {}
                }
            }
            .instrument(tracing::info_span!("cluster_events")),
        );
        Ok(())
    }

    async fn follow_cluster(&self, mut events: mpsc::UnboundedReceiver<ClusterEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                ClusterEvent::Records(mut changes) => {
                    let removed = std::mem::take(&mut changes.removed);
                    self.apply(changes);
                    for record in removed {
                        self.deleted_elsewhere(record);
                    }
                }
                ClusterEvent::LeaseLost(id) => {
                    let Some(env) = self.shared.envs.get(&id) else {
                        continue;
                    };
                    tracing::warn!(env = %id, "cluster: lease lost; stopping the instance here (the resource is kept)");
                    let driver = self.shared.driver.clone();
                    self.shared.driver.spawn(async move {
                        let _op = env.op.lock().await;
                        driver.stop_locked(&env).await;
                    });
                }
                ClusterEvent::Orphaned(id) => {
                    if let Some(env) = self.shared.envs.get(&id) {
                        self.shared.driver.spawn_converge(env);
                    }
                }
                ClusterEvent::Status(id) => {
                    if let Some(env) = self.shared.envs.get(&id) {
                        self.shared.driver.announce(&env);
                    }
                }
                ClusterEvent::Abandoned(removal) => {
                    let this = self.clone();
                    let span = tracing::info_span!("removal", env = %removal.record.id);
                    self.shared
                        .driver
                        .spawn(async move { this.take_removal(removal).await }.instrument(span));
                }
            }
        }
    }

    /// `record` was deleted on another host: this host forgets it, has its provider
    /// remove the resource if it runs the environment or, stopped, ran it last (the
    /// deleting host leaves that to this one), and removes its workspace here if it
    /// has one (it ran the environment before).
    fn deleted_elsewhere(&self, record: Record) {
        let Some(env) = self.shared.envs.forget(&record.id) else {
            return;
        };
        let Some(cluster) = self.cluster() else {
            return;
        };
        let held = cluster.holds(&record.id);
        let ran_last = record.last_host.as_deref() == Some(cluster.host_id())
            && cluster.elsewhere(&record.id).is_none();
        tracing::info!(env = %record.id, running_here = held, ran_last, "cluster: deleted on another host");
        self.events().deleted(&record);
        let this = self.clone();
        let cluster = cluster.clone();
        self.shared.driver.spawn(async move {
            env.deleting.cancel();
            let _op = env.op.lock().await;
            let driver = &this.shared.driver;
            if held || ran_last {
                driver.destroy_locked(&env, &record).await;
                driver.release(&env).await;
                cluster.removal_done(&record.id).await;
            } else {
                driver.stop_locked(&env).await;
            }
            this.shared.envs.close_hub(&env.id, "environment deleted");
            driver.remove_workspace(&env, &record).await;
        });
    }

    /// Stores a new `record`; in a cluster, once its name is reserved cluster-wide
    /// (two hosts creating one name at once: one gets `Conflict`) and, if it is to
    /// run, with its lease taken first ([`Manager::lease_ahead`]).
    pub(super) async fn insert_record(&self, record: Record) -> Result<(), LifecycleError> {
        let Some(cluster) = self.cluster() else {
            return Ok(self.shared.store.insert(record).await?);
        };
        let (name, id) = (record.name.clone(), record.id.clone());
        let store = &self.shared.store;
        let reserved = match cluster.claim_name(&name, &id).await {
            Ok(reserved) => reserved,
            Err(e) => {
                // NATS may have made the reservation all the same.
                cluster.release_name_later(&name, &id);
                return Err(LifecycleError::ClusterUnavailable(e.to_string()));
            }
        };
        if !reserved {
            return Err(LifecycleError::Conflict(
                StoreError::NameTaken(name).to_string(),
            ));
        }
        let leased = record.desired_state == DesiredState::Running && self.lease_ahead(&id).await;
        let inserted = store.insert(record).await;
        if inserted.is_err() {
            cluster.release_name(&name, &id).await;
            self.lease_ahead_undone(&id, leased).await;
        }
        Ok(inserted?)
    }

    /// Before this host's record says environment `id` should run: in a cluster, takes
    /// its lease now unless another host holds it, so that no other host's orphan
    /// sweep, seeing an environment that should run and that nobody holds in the
    /// moment before this host's start would take the lease, runs it there instead.
    /// Whether a lease was taken here that was not held before (to give up with
    /// [`Manager::lease_ahead_undone`] if the record is not written after all).
    pub(super) async fn lease_ahead(&self, id: &str) -> bool {
        let Some(cluster) = self.cluster() else {
            return false;
        };
        if cluster.holds(id) {
            return false;
        }
        match cluster.claim(id).await {
            Ok(taken) => taken,
            Err(e) => {
                // The start's own claim tries again (and says why it could not).
                tracing::debug!(env = %id, error = %e, "cluster: taking the lease ahead of a start");
                false
            }
        }
    }

    /// Gives up a lease [`Manager::lease_ahead`] took for a start that was not written.
    pub(super) async fn lease_ahead_undone(&self, id: &str, leased: bool) {
        if let (true, Some(cluster)) = (leased, self.cluster()) {
            cluster.release(id).await;
        }
    }

    /// Writes that environment `id` should run, its lease taken first
    /// ([`Manager::lease_ahead`]) and given up if the write fails.
    pub(super) async fn want_running(&self, id: &str) -> Result<(), LifecycleError> {
        let leased = self.lease_ahead(id).await;
        let written = (self.shared.store)
            .update(id, |r| r.desired_state = DesiredState::Running)
            .await;
        if written.is_err() {
            self.lease_ahead_undone(id, leased).await;
        }
        written?;
        Ok(())
    }

    /// Before environment `id` is deleted: whether this host is to have its provider
    /// remove the resource. Alone, or when it runs the environment, always; when
    /// another host runs it, that host does, as the delete reaches it. For a stopped
    /// environment in a cluster, the host that ran it last does when it is alive (a
    /// resource may live on that host's disk, where only its own provider can reach
    /// it), else this one. In a cluster the host chosen is noted there
    /// ([`Cluster::leave_removal`]), so another host does it if that one dies first.
    pub(super) async fn leave_removal(&self, id: &str) -> Removal {
        let alone = Removal {
            here: true,
            noted: false,
        };
        let Some(cluster) = self.cluster() else {
            return alone;
        };
        let Some(record) = self.shared.store.peek(id, Record::clone) else {
            return alone;
        };
        let me = cluster.host_id();
        let host = match (cluster.elsewhere(id), record.last_host.as_deref()) {
            _ if cluster.holds(id) => me.to_owned(),
            (Some(lease), _) => lease.host,
            // When NATS cannot say whether it is alive, this host removes it: the
            // delete goes on, and the resource is not left to a host that may be gone.
            (None, Some(last)) if last != me && cluster.host_alive(last).await.unwrap_or(false) => {
                tracing::info!(env = %id, host = %last, "the host that ran it last removes its resource");
                last.to_owned()
            }
            _ => me.to_owned(),
        };
        let noted = match cluster.leave_removal(&record, &host).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(env = %id, %host, error = %e, "cluster: could not note who removes the resource; if that host dies before it does, the resource is left");
                false
            }
        };
        Removal {
            here: host == me,
            noted,
        }
    }

    /// How many runtimes of the environments this host runs are connected to it.
    pub(super) fn runtimes_connected_here(&self) -> usize {
        (self.shared.envs.all().iter())
            .filter(|env| env.hub.runtime_connected())
            .count()
    }

    /// The resource of deleted record `id` is removed (or its removal was tried, or
    /// the delete did not happen): no other host need do it.
    pub(super) async fn removal_done(&self, id: &str) {
        if let Some(cluster) = self.cluster() {
            cluster.removal_done(id).await;
        }
    }

    /// A deleted environment's resource that was left to a host that is gone: claimed
    /// for this host and removed by its provider. Not here when this host has no such
    /// provider, or the environment's name is another one's now (the workspace the
    /// provider is given is found by name): then another host, or a later sweep.
    async fn take_removal(&self, removal: Box<Abandoned>) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let record = &removal.record;
        let id = record.id.as_str();
        let store = &self.shared.store;
        if self.shared.envs.get(id).is_some() || store.peek(id, |_| ()).is_some() {
            return;
        }
        if self.shared.engine.provider(&record.provider).is_none() {
            tracing::warn!(env = %id, provider = %record.provider, host = %removal.host, "cluster: a deleted environment's resource was left to a host that is gone, and this host has no such provider to remove it");
            return;
        }
        let name_taken = store.find(|r| r.name == record.name).is_some()
            || !matches!(cluster.claim_name(&record.name, id).await, Ok(true));
        if name_taken {
            tracing::info!(env = %id, host = %removal.host, "cluster: not removing a resource left to a host that is gone: its environment's name is another's now");
            return;
        }
        if !cluster.claim_removal(&removal).await {
            cluster.release_name(&record.name, id).await;
            return;
        }
        tracing::info!(env = %id, host = %removal.host, "cluster: removing the resource of a deleted environment, left to a host that is gone");
        let config = self.shared.config.get();
        workspaces::mark(&config, &record.name);
        let env = self.shared.envs.add(id);
        {
            let _op = env.op.lock().await;
            self.driver().destroy_locked(&env, record).await;
        }
        self.shared.envs.forget(id);
        self.shared.envs.close_hub(id, "environment deleted");
        self.driver().remove_workspace(&env, record).await;
        workspaces::unmark(&config, &record.name);
        cluster.release_name(&record.name, id).await;
        cluster.removal_done(id).await;
    }

    /// Lets go of a deleted record's name cluster-wide.
    pub(super) async fn release_record_name(&self, record: &Record) {
        if let Some(cluster) = self.cluster() {
            cluster.release_name(&record.name, &record.id).await;
        }
    }

    /// The cluster as this host sees it; `None` in single-host mode.
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.shared.driver.shared.cluster.as_ref()
    }

    /// Whether another host runs environment `id` (as this host last saw its lease).
    pub(super) fn runs_elsewhere(&self, id: &str) -> bool {
        self.cluster().is_some_and(|c| c.elsewhere(id).is_some())
    }

    /// `Elsewhere` when another host runs environment `id`: its runtime and apps
    /// connect there (the message says where, when that host confirms the URL).
    pub(super) async fn refuse_elsewhere(&self, id: &str) -> Result<(), LifecycleError> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        let Some(lease) = cluster.elsewhere(id) else {
            return Ok(());
        };
        let url = cluster.confirmed_url(&lease).await;
        Err(LifecycleError::Elsewhere {
            id: id.to_owned(),
            host: lease.host,
            url,
        })
    }

    /// `Elsewhere` when another host runs `record`'s environment. Its lease as last
    /// seen says so; for one that should run and whose lease this host neither holds
    /// nor saw, the cluster is asked by claiming it: a lease taken with the record a
    /// moment ago may not have reached this host's watch yet, and a lease nobody holds
    /// (its host died) is this host's to run it under, as its start would claim it.
    pub(super) async fn refuse_running_elsewhere(
        &self,
        record: &Record,
    ) -> Result<(), LifecycleError> {
        self.refuse_elsewhere(&record.id).await?;
        if record.desired_state == DesiredState::Running && !self.lease_ahead(&record.id).await {
            // Not taken: held here already, or by another host (now seen), or NATS
            // could not say (then the start's own claim decides, as before).
            self.refuse_elsewhere(&record.id).await?;
        }
        Ok(())
    }

    /// Cluster mode with `relay = "nats"`: a tunnel through NATS to host `host`'s
    /// API, for an app at `app` of environment `id` that `host` runs. `None` when
    /// apps are bridged straight to the other host's URL instead (or there is no
    /// cluster).
    pub(crate) async fn tunnel_to(
        &self,
        host: &str,
        id: &str,
        app: std::net::IpAddr,
    ) -> Option<Result<crate::cluster::TunnelStream, ClusterError>> {
        let cluster = self.cluster()?;
        if cluster.relay() != ClusterRelay::Nats {
            return None;
        }
        Some(cluster.tunnel(host, id, app).await)
    }

    /// How long a bridged app may leave a frame unread before its bridge lets go of
    /// it: the relay's idle timeout, as for an app connected here.
    pub(crate) fn bridge_stall(&self) -> std::time::Duration {
        self.shared.envs.relay_config().idle_timeout
    }

    /// `Conflict` unless this host holds environment `id`'s lease (for its runtime).
    pub(super) async fn refuse_unheld(&self, id: &str) -> Result<(), LifecycleError> {
        match self.cluster() {
            Some(cluster) if !cluster.holds(id) => {
                self.refuse_elsewhere(id).await?;
                Err(LifecycleError::Conflict(format!(
                    "environment {id} does not run on this host (host {})",
                    cluster.host_id()
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Driver {
    /// Whether `env` may run here: always alone; in a cluster, once this host holds
    /// its lease (taken now if no other host holds it).
    pub(super) async fn may_run(&self, env: &Env) -> bool {
        let Some(cluster) = &self.shared.cluster else {
            return true;
        };
        match cluster.claim(&env.id).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::info!(env = %env.id, "cluster: another host runs this environment");
                false
            }
            Err(e) => {
                tracing::warn!(env = %env.id, error = %e, "cluster: cannot claim the lease; not starting here");
                false
            }
        }
    }

    /// Gives up `env`'s lease after it stopped here (or was deleted).
    pub(super) async fn release(&self, env: &Env) {
        if let Some(cluster) = &self.shared.cluster {
            cluster.release(&env.id).await;
        }
    }

    /// Tells the cluster `env`'s live status, when this host runs it.
    pub(super) fn report_status(&self, env: &Env, status: Status, connected: bool) {
        if let Some(cluster) = &self.shared.cluster {
            let status = serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            cluster.report_status(&env.id, &status, connected);
        }
    }
}
