//! Cluster mode in the lifecycle: an environment runs on the host holding its lease,
//! other hosts' record changes are applied like outside edits, a lost lease stops
//! the instance here, and an orphan (its host died) is started here if this host
//! wins its lease. Single-host mode has no cluster and none of this runs.

use tokio::sync::mpsc;
use tracing::Instrument;

use super::driver::Driver;
use super::envs::Env;
use super::{LifecycleError, Manager, Status};
use crate::cluster::{Cluster, ClusterError, ClusterEvent};
use crate::config::ClusterRelay;
use crate::store::{Record, StoreError};

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
        self.shared.driver.spawn(async move {
            env.deleting.cancel();
            let _op = env.op.lock().await;
            let driver = &this.shared.driver;
            if held || ran_last {
                driver.destroy_locked(&env, &record).await;
                driver.release(&env).await;
            } else {
                driver.stop_locked(&env).await;
            }
            this.shared.envs.close_hub(&env.id, "environment deleted");
            driver.remove_workspace(&env, &record).await;
        });
    }

    /// Stores a new `record`; in a cluster, once its name is reserved cluster-wide
    /// (two hosts creating one name at once: one gets `Conflict`).
    pub(super) async fn insert_record(&self, record: Record) -> Result<(), LifecycleError> {
        let Some(cluster) = self.cluster() else {
            return Ok(self.shared.store.insert(record).await?);
        };
        let (name, id) = (record.name.clone(), record.id.clone());
        let store = &self.shared.store;
        let reserved = cluster
            .claim_name(&name, &id)
            .await
            .map_err(|e| LifecycleError::Internal(e.to_string()))?;
        if !reserved {
            return Err(LifecycleError::Conflict(
                StoreError::NameTaken(name).to_string(),
            ));
        }
        let inserted = store.insert(record).await;
        if inserted.is_err() {
            cluster.release_name(&name, &id).await;
        }
        Ok(inserted?)
    }

    /// Whether this host has deleted `record`'s provider remove its resource: alone,
    /// or when it runs it, always; for a stopped environment in a cluster, only when
    /// the host that ran it last is this one, unknown, or no longer alive (a resource
    /// may live on that host's disk, where only its own provider can reach it). When
    /// that host is alive it does it as the delete reaches it (`deleted_elsewhere`).
    pub(super) async fn removes_resource_here(&self, record: &Record) -> bool {
        let Some(cluster) = self.cluster() else {
            return true;
        };
        if cluster.holds(&record.id) {
            return true;
        }
        match record.last_host.as_deref() {
            Some(last) if last != cluster.host_id() => {
                let alive = cluster.host_alive(last).await;
                if alive {
                    tracing::info!(env = %record.id, host = %last, "the host that ran it last removes its resource");
                }
                !alive
            }
            _ => true,
        }
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

    /// `Conflict` when another host runs environment `id`: its runtime and apps
    /// connect there (the message says where).
    pub(super) fn refuse_elsewhere(&self, id: &str) -> Result<(), LifecycleError> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        match cluster.elsewhere(id) {
            Some(lease) => Err(LifecycleError::Elsewhere {
                id: id.to_owned(),
                host: lease.host,
                url: lease.url,
            }),
            None => Ok(()),
        }
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
    ) -> Option<Result<tokio::io::DuplexStream, ClusterError>> {
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
    pub(super) fn refuse_unheld(&self, id: &str) -> Result<(), LifecycleError> {
        match self.cluster() {
            Some(cluster) if !cluster.holds(id) => {
                self.refuse_elsewhere(id)?;
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
