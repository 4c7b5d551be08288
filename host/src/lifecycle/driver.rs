//! The driver of provider instances: it holds what starting, stopping, supervising
//! and restarting an environment takes (the operator's settings, the records, the
//! engine, the background tasks) and the helpers those operations share. The
//! operations themselves are in `ops` and `supervisor`.

use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::envs::Env;
use super::events::Events;
use super::live_config::LiveConfig;
use super::progress::{StartPhase, StartProgress};
use super::removals::Removals;
use super::{EnvironmentView, Status, provider_status};
use crate::audit::{Actor, AuditLog, Entry, Outcome};
use crate::cluster::Cluster;
use crate::engine::{Call, CallError, Engine, ProviderHandle};
use crate::host_paths::HiddenDataDir;
use crate::redact::ConfigValues;
use crate::store::{Record, Store};

#[derive(Debug)]
pub(super) struct DriverShared {
    pub(super) config: LiveConfig,
    pub(super) store: Arc<Store>,
    pub(super) engine: Arc<Engine>,
    /// The `ws://host:port` runtimes connect back to.
    pub(super) runtime_base: String,
    /// Every background operation, waited for at shutdown.
    pub(super) tasks: TaskTracker,
    /// Where the changes the host makes on its own are recorded.
    pub(super) audit: AuditLog,
    /// Where every status change is published for `/ws/events`.
    pub(super) events: Events,
    /// Cluster mode: the leases and shared records; `None` when this host is alone.
    pub(super) cluster: Option<Cluster>,
    /// Removals of deleted environments' resources that failed, to try again.
    pub(super) removals: Arc<Removals>,
}

/// Drives environments' provider instances; cheap to clone into tasks.
#[derive(Debug, Clone)]
pub(super) struct Driver {
    pub(super) shared: Arc<DriverShared>,
}

impl Driver {
    pub(super) fn new(
        config: LiveConfig,
        store: Arc<Store>,
        engine: Arc<Engine>,
        runtime_base: String,
        audit: AuditLog,
        cluster: Option<Cluster>,
        removals: Arc<Removals>,
    ) -> Self {
        Self {
            shared: Arc::new(DriverShared {
                config,
                store,
                engine,
                runtime_base,
                tasks: TaskTracker::new(),
                audit,
                events: Events::new(),
                cluster,
                removals,
            }),
        }
    }

    /// Records a change the host made to `env` on its own (a recovery after a host
    /// start, a restart after a failure). Nobody waits on it, so it is written in the
    /// background; a failure to write is logged.
    pub(super) fn audit_system(
        &self,
        env: &str,
        action: &'static str,
        outcome: Outcome,
        reason: &str,
    ) {
        let mut entry = Entry::new(Actor::System, action, outcome).target(env);
        if !reason.is_empty() {
            entry = entry.reason(reason);
        }
        let audit = self.shared.audit.clone();
        let env = env.to_owned();
        self.spawn(async move {
            if let Err(e) = audit.record(entry).await {
                tracing::warn!(%env, error = %e, "audit entry not written");
            }
        });
    }

    /// Runs `task` in the background, tracked so shutdown waits for it.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.shared.tasks.spawn(task);
    }

    /// `env` shown as its record joined with its live state.
    pub(super) fn view_of(&self, env: &Env, record: Record) -> EnvironmentView {
        let loaded = self.shared.engine.provider(&record.provider);
        let live = env.live();
        let start = live.start.clone();
        let provider = provider_status::provider_status(
            &record.provider,
            live.provider.as_ref(),
            loaded.as_deref(),
        );
        let idleness = super::idle::idleness(env, &record, live.status);
        let (mut status, mut connected) = (live.status, env.hub.runtime_connected());
        let mut host = None;
        if let Some(cluster) = &self.shared.cluster {
            if let Some(lease) = cluster.elsewhere(&record.id) {
                // Another host runs it: its status is the one it reports there.
                status = serde_json::from_value(serde_json::Value::String(lease.status))
                    .unwrap_or(status);
                connected = lease.runtime_connected;
                host = Some(lease.host);
            } else if cluster.holds(&record.id) {
                host = Some(cluster.host_id().to_owned());
            }
        }
        let config = self.shared.config.get();
        // What the provider says may quote what it was handed (`crate::redact`).
        let handed = ConfigValues::handed(&config, &record.provider, record.template());
        let mut metadata = live.metadata.clone();
        if !handed.is_empty() {
            for value in metadata.values_mut() {
                *value = handed.hide(value);
            }
        }
        let view = EnvironmentView::new(
            record,
            status,
            connected,
            metadata,
            live.provider.as_ref(),
            provider,
            idleness,
        )
        .with_start(start);
        let data_dir = HiddenDataDir::new(&config.data_dir);
        let last_error = match (view.last_error, handed.is_empty()) {
            (Some(error), false) => Some(handed.hide(&error)),
            (error, _) => error,
        };
        EnvironmentView {
            host,
            data_dir,
            last_error,
            ..view
        }
    }

    /// Moves `env` toward its desired state, in the background.
    pub(super) fn spawn_converge(&self, env: Arc<Env>) {
        let this = self.clone();
        let span = tracing::info_span!("converge", env = %env.id);
        self.spawn(
            async move {
                let _op = env.op.lock().await;
                this.converge_locked(&env).await;
            }
            .instrument(span),
        );
    }

    /// Stops `env` if it runs and starts it again, in the background.
    pub(super) fn spawn_restart(&self, env: Arc<Env>) {
        let this = self.clone();
        let span = tracing::info_span!("restart", env = %env.id);
        self.spawn(
            async move {
                let _op = env.op.lock().await;
                if env.live().provider.is_some() {
                    this.set_status(&env, Status::Restarting);
                    this.stop_locked(&env).await;
                }
                this.converge_locked(&env).await;
            }
            .instrument(span),
        );
    }

    /// Detaches the running instance (ending its supervision) and returns it.
    pub(super) fn take_instance(&self, env: &Env) -> Option<ProviderHandle> {
        let mut live = env.live();
        if let Some(supervision) = live.supervision.take() {
            supervision.cancel();
        }
        live.metadata.clear();
        live.provider.take()
    }

    /// Records `reason` and puts `env` in `error`.
    pub(super) async fn fail(&self, env: &Env, reason: String) {
        // The reason may quote a provider's message or trap text: bounded in the record.
        let reason = crate::untrusted::cut(&reason, crate::untrusted::MAX_LAST_ERROR);
        if let Err(e) = self
            .shared
            .store
            .update(&env.id, |r| r.last_error = Some(reason.clone()))
            .await
        {
            tracing::warn!(env = %env.id, error = %e, "could not record the failure");
        }
        self.set_status(env, Status::Error);
    }

    pub(super) fn set_status(&self, env: &Env, status: Status) {
        {
            let mut live = env.live();
            live.status = status;
            match status {
                // A new start's progress begins; a failed one keeps where it failed.
                Status::Starting => live.start = Some(StartProgress::begin()),
                Status::Stopping | Status::Stopped => live.start = None,
                _ => {}
            }
        }
        self.announce(env);
    }

    /// Moves `env`'s start on to `phase` and tells its apps.
    pub(super) fn enter_phase(&self, env: &Env, phase: StartPhase) {
        let changed = env.live().start.as_mut().is_some_and(|p| p.enter(phase));
        if changed {
            tracing::info!(env = %env.id, ?phase, "start phase");
            self.announce(env);
        }
    }

    /// The provider started `env`: it is `running`, and its start waits for the
    /// runtime unless that has connected already. Checked under the same lock as
    /// `runtime_arrived`, so a runtime that connects before the provider's start
    /// returns is not missed.
    pub(super) fn provider_started(&self, env: &Env) {
        let phase = {
            let mut live = env.live();
            live.status = Status::Running;
            let phase = if env.hub.runtime_connected() {
                StartPhase::Running
            } else {
                StartPhase::WaitingForRuntime
            };
            if let Some(progress) = live.start.as_mut() {
                progress.enter(phase);
            }
            phase
        };
        tracing::info!(env = %env.id, ?phase, "start phase");
        self.announce(env);
    }

    /// The runtime of `env` connected: a start waiting for it is complete. Checked
    /// under the same lock as `enter_phase`, so a runtime that connects before the
    /// provider's start returns is not missed.
    pub(super) fn runtime_arrived(&self, env: &Env) {
        let completed = match env.live().start.as_mut() {
            Some(p) if p.phase == StartPhase::WaitingForRuntime => p.enter(StartPhase::Running),
            _ => false,
        };
        if completed {
            let phase = StartPhase::Running;
            tracing::info!(env = %env.id, ?phase, "start phase");
        }
    }

    /// Sends the current status to every app of `env` and to the events stream.
    pub(super) fn announce(&self, env: &Env) {
        if let Some(record) = self.shared.store.get(&env.id) {
            let view = self.view_of(env, record);
            if view.host.as_deref() == self.shared.cluster.as_ref().map(Cluster::host_id) {
                self.report_status(env, view.status, view.runtime.connected);
            }
            env.hub.broadcast(view.status_event());
            self.shared.events.status(&view);
        }
    }

    /// A call into a running instance trapped or timed out during an app request:
    /// the instance is dead, which the environment's supervision handles as a failure.
    pub(super) fn instance_failed(&self, env: Arc<Env>, handle: ProviderHandle, err: CallError) {
        let this = self.clone();
        self.spawn(async move {
            this.on_failure(env, handle, err.to_string()).await;
        });
    }

    /// Removes a deleted environment's workspace; only ever a directory under the data
    /// directory, so the name must pass the rule.
    pub(super) async fn remove_workspace(&self, env: &Env, record: &Record) {
        let config = self.shared.config.get();
        let workspace = match config.workspace_dir(&record.name) {
            Ok(workspace) => workspace,
            Err(e) => {
                tracing::error!(env = %env.id, error = %e, "not removing a workspace outside the data directory");
                return;
            }
        };
        let data_dir = config.data_dir.clone();
        let removed =
            tokio::task::spawn_blocking(move || remove_own_workspace(&data_dir, &workspace)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(WorkspaceRemoval::Refused(e))) => {
                tracing::error!(env = %env.id, error = %e, "not removing the workspace")
            }
            Ok(Err(WorkspaceRemoval::Failed(e))) => {
                tracing::warn!(env = %env.id, error = %e, "could not remove the workspace")
            }
            Err(e) => {
                tracing::warn!(env = %env.id, error = %e, "could not remove the workspace")
            }
        }
    }

    /// Closes `env`'s instance without changing its desired state (host shutdown).
    /// Operations in flight are abandoned: a hung start must not hold shutdown.
    pub(super) async fn shut_down(&self, env: &Env) {
        env.deleting.cancel();
        let _op = env.op.lock().await;
        if let Some(handle) = self.take_instance(env) {
            let timeout = self.shared.config.get().lifecycle.stop_timeout;
            if let Err(e) = handle.call(Call::Close, timeout).await {
                let error = crate::untrusted::logged(&e.to_string());
                tracing::warn!(env = %env.id, %error, "provider close failed");
            }
            super::deadline::shut_down_within(&env.id, &handle, timeout).await;
        }
        env.hub.close("host shutting down");
    }

    /// Waits for every background operation once no new one can start.
    pub(super) async fn drain(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

/// Why a workspace was not removed.
enum WorkspaceRemoval {
    /// Its parent is not the host's own directory (a link in its place): never
    /// through it, which would remove a directory elsewhere.
    Refused(std::io::Error),
    /// The removal itself failed.
    Failed(std::io::Error),
}

/// Removes `workspace` (and everything in it) relative to its parent, reached from
/// `data_dir` through no link (see `own_dirs`); one not there is removed already.
fn remove_own_workspace(
    data_dir: &std::path::Path,
    workspace: &std::path::Path,
) -> Result<(), WorkspaceRemoval> {
    let (Some(parent), Some(name)) = (workspace.parent(), workspace.file_name()) else {
        return Ok(());
    };
    let parent = match crate::own_dirs::open(data_dir, parent) {
        Ok(parent) => parent,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(WorkspaceRemoval::Refused(e)),
    };
    match parent.remove_dir_all(&name.to_string_lossy()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(WorkspaceRemoval::Failed(e)),
        _ => Ok(()),
    }
}
