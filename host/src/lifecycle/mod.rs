//! The lifecycle manager: environments as durable objects with a desired state (in
//! the record) and a live status, driven toward each other one operation at a time
//! per environment, every provider call under a timeout.
//!
//! It is the only layer the API calls. It drives the engine (one provider instance
//! per running environment), the store (records), and the relay (connections),
//! and it mints the runtime token of each start.

mod messages;
mod ops;
mod provider_reload;
mod provider_status;
mod reconcile;
mod sessions;
mod supervisor;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ServeConfig;
use crate::engine::{Call, Engine, ProviderHandle, RuntimePort};
use crate::relay::{Hub, Relay};
use crate::store::{DesiredState, Record, RestartPolicy, Store, StoreError, validate};
use crate::sync::MutexExt;
use crate::untrusted;

pub use provider_status::{LoadedView, ProviderState, ProviderStatus};
pub use sessions::{AppSession, RuntimeSession};
pub use view::{EnvironmentView, RuntimeView, Status};

/// Why a lifecycle request failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No such environment.
    #[error("no environment with id {0:?}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (a taken name, a stopped environment).
    #[error("{0}")]
    Conflict(String),
    /// A runtime presented a bad token.
    #[error("{0}")]
    Unauthorized(String),
    /// The environment has its maximum number of connections.
    #[error("{0}")]
    TooManyConnections(String),
    /// Persisting failed.
    #[error("persisting the change failed: {0}")]
    Store(StoreError),
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::NameTaken(_) | StoreError::Held(_) => Self::Conflict(e.to_string()),
            other => Self::Store(other),
        }
    }
}

/// What creating an environment takes.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Unique name (letters, digits, `.`, `_`, `-`; it names a directory).
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// Config handed to the provider.
    pub config: Map<String, Value>,
    /// Start it right away.
    pub start: bool,
    /// What to do when it fails.
    pub restart_policy: RestartPolicy,
}

#[derive(Debug, Default)]
struct Live {
    status: Status,
    provider: Option<ProviderHandle>,
    /// Cancelled when the running instance is taken down (ends its supervision).
    supervision: Option<CancellationToken>,
    metadata: BTreeMap<String, String>,
    /// Policy restarts in a row (reset after a stable period).
    attempt: u32,
    last_failure: Option<Instant>,
}

/// One environment's live side.
#[derive(Debug)]
struct Env {
    id: String,
    /// Serialises operations (start, stop, delete) on this environment.
    op: tokio::sync::Mutex<()>,
    /// Fired once when the environment is being deleted: operations in flight give up.
    deleting: CancellationToken,
    live: Mutex<Live>,
    hub: Arc<Hub>,
}

impl Env {
    fn new(id: &str, hub: Arc<Hub>) -> Self {
        Self {
            id: id.to_owned(),
            op: tokio::sync::Mutex::new(()),
            deleting: CancellationToken::new(),
            live: Mutex::new(Live::default()),
            hub,
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.locked()
    }
}

/// The host's own health, for `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct HostHealth {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// Why it is degraded.
    pub reasons: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    config: ServeConfig,
    store: Store,
    engine: Engine,
    relay: Relay,
    runtime_base: String,
    envs: Mutex<HashMap<String, Arc<Env>>>,
    tasks: TaskTracker,
    /// Fired when the host starts shutting down.
    closing: CancellationToken,
}

/// A cloneable front of the lifecycle manager.
#[derive(Debug, Clone)]
pub struct Manager {
    shared: Arc<Shared>,
}

/// The runtime port of an instance: its environment's hub.
struct HubPort(Arc<Hub>);

impl RuntimePort for HubPort {
    fn send(&self, message: String) -> Result<(), String> {
        self.0.to_runtime(message).map_err(|e| e.to_string())
    }
    fn is_connected(&self) -> bool {
        self.0.runtime_connected()
    }
}

impl Manager {
    /// A manager over loaded providers and opened records; `runtime_base` is the
    /// `ws://host:port` runtimes connect back to.
    pub fn new(config: ServeConfig, store: Store, engine: Engine, runtime_base: String) -> Self {
        let relay = Relay::new(config.relay.clone());
        let envs = store
            .list()
            .into_iter()
            .map(|r| {
                let env = Arc::new(Env::new(&r.id, relay.hub(&r.id)));
                (r.id, env)
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                config,
                store,
                engine,
                relay,
                runtime_base,
                envs: Mutex::new(envs),
                tasks: TaskTracker::new(),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// Brings every environment whose desired state is `running` up (after a host start).
    pub fn recover(&self) {
        for record in self.shared.store.list() {
            if record.desired_state == DesiredState::Running
                && let Some(env) = self.env(&record.id)
            {
                self.spawn_converge(env);
            }
        }
    }

    /// Whether the host is fully well, and why not.
    pub fn health(&self) -> HostHealth {
        let mut reasons = Vec::new();
        if let Some(why) = self.shared.store.invalid() {
            reasons.push(format!("records file: {why}; serving the last good state"));
        }
        for held in self.shared.store.held() {
            reasons.push(format!("records file: {held}"));
        }
        for failure in self.shared.engine.failures() {
            reasons.push(format!(
                "provider {}: {}",
                failure.path.display(),
                failure.error
            ));
        }
        HostHealth {
            status: if reasons.is_empty() { "ok" } else { "degraded" },
            reasons,
        }
    }

    /// The engine, for listing providers.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The operator settings.
    pub fn config(&self) -> &ServeConfig {
        &self.shared.config
    }

    fn envs(&self) -> MutexGuard<'_, HashMap<String, Arc<Env>>> {
        self.shared.envs.locked()
    }

    fn env(&self, id: &str) -> Option<Arc<Env>> {
        self.envs().get(id).cloned()
    }

    /// The live side of environment `id`, or `NotFound`.
    fn known_env(&self, id: &str) -> Result<Arc<Env>, LifecycleError> {
        self.env(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    /// `Conflict` for a record held back as invalid: the API never acts on one (its
    /// text stays as written until someone fixes or removes it in the file).
    fn refuse_held(&self, id: &str) -> Result<(), LifecycleError> {
        match self.shared.store.held_reason(id) {
            None => Ok(()),
            Some(reason) => Err(LifecycleError::Conflict(format!(
                "the record with id {} in {} is invalid and held back ({reason}); the host does not change it: fix or remove it in the file",
                untrusted::named(id),
                self.shared.store.path().display()
            ))),
        }
    }

    /// The record of environment `id`, or `NotFound`.
    fn known_record(&self, id: &str) -> Result<Record, LifecycleError> {
        self.shared
            .store
            .get(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    fn view_of(&self, env: &Env, record: Record) -> EnvironmentView {
        let loaded = self.shared.engine.provider(&record.provider);
        let live = env.live();
        let provider = provider_status::provider_status(
            &record.provider,
            live.provider.as_ref(),
            loaded.as_deref(),
        );
        EnvironmentView::new(
            record,
            live.status,
            env.hub.runtime_connected(),
            live.metadata.clone(),
            live.provider.as_ref(),
            provider,
        )
    }

    /// Every environment with its live status.
    pub fn list(&self) -> Vec<EnvironmentView> {
        self.shared
            .store
            .list()
            .into_iter()
            .filter_map(|r| self.env(&r.id).map(|env| self.view_of(&env, r)))
            .collect()
    }

    /// One environment.
    pub fn get(&self, id: &str) -> Result<EnvironmentView, LifecycleError> {
        let record = self.known_record(id)?;
        let env = self.known_env(id)?;
        Ok(self.view_of(&env, record))
    }

    /// Creates an environment (and starts it if asked).
    pub async fn create(&self, req: CreateRequest) -> Result<EnvironmentView, LifecycleError> {
        validate_name(&req.name)?;
        validate::check_config(&req.config).map_err(LifecycleError::Invalid)?;
        if self.shared.engine.provider(&req.provider).is_none() {
            return Err(LifecycleError::Invalid(format!(
                "no provider named {:?} is loaded",
                req.provider
            )));
        }
        let mut record = Record::new(
            uuid::Uuid::new_v4().to_string(),
            req.name,
            req.provider,
            req.config,
        );
        record.restart_policy = req.restart_policy;
        if req.start {
            record.desired_state = DesiredState::Running;
        }
        let id = record.id.clone();
        self.shared.store.insert(record).await?;
        let env = Arc::new(Env::new(&id, self.shared.relay.hub(&id)));
        self.envs().insert(id.clone(), env.clone());
        tracing::info!(env = %id, "environment created");
        if req.start {
            self.spawn_converge(env);
        }
        self.get(&id)
    }

    /// Applies a JSON merge patch to an environment's config (used from its next
    /// start) and sets its restart policy if given.
    pub async fn patch(
        &self,
        id: &str,
        config: Option<Map<String, Value>>,
        restart_policy: Option<RestartPolicy>,
    ) -> Result<EnvironmentView, LifecycleError> {
        self.refuse_held(id)?;
        let mut merged = self.known_record(id)?.config;
        if let Some(patch) = config.clone() {
            merge_patch(&mut merged, patch);
            validate::check_config(&merged).map_err(LifecycleError::Invalid)?;
        }
        self.shared
            .store
            .update(id, |r| {
                if let Some(patch) = config {
                    merge_patch(&mut r.config, patch);
                }
                if let Some(policy) = restart_policy {
                    r.restart_policy = policy;
                }
            })
            .await?;
        self.get(id)
    }

    /// Sets the desired state and lets the environment converge on it.
    pub async fn set_desired(
        &self,
        id: &str,
        desired: DesiredState,
    ) -> Result<EnvironmentView, LifecycleError> {
        self.refuse_held(id)?;
        let env = self.known_env(id)?;
        self.shared
            .store
            .update(id, |r| r.desired_state = desired)
            .await?;
        self.spawn_converge(env);
        self.get(id)
    }

    /// Stops (if running) and starts again, with a fresh runtime token.
    pub async fn restart(&self, id: &str) -> Result<EnvironmentView, LifecycleError> {
        self.refuse_held(id)?;
        let env = self.known_env(id)?;
        self.shared
            .store
            .update(id, |r| r.desired_state = DesiredState::Running)
            .await?;
        self.spawn_restart(env);
        self.get(id)
    }

    fn spawn_restart(&self, env: Arc<Env>) {
        let this = self.clone();
        let span = tracing::info_span!("restart", env = %env.id);
        self.shared.tasks.spawn(
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

    /// Stops an environment, lets its provider remove the resource, and forgets it.
    /// Works from any state: an operation in flight is abandoned.
    /// A record held back as invalid is refused (409): the host never acts on it.
    pub async fn delete(&self, id: &str) -> Result<(), LifecycleError> {
        self.refuse_held(id)?;
        let env = self.known_env(id)?;
        env.deleting.cancel();
        let _op = env.op.lock().await;
        let record = self.shared.store.remove(id).await?;
        self.destroy_locked(&env, &record).await;
        self.envs().remove(id);
        self.shared.relay.remove(id, "environment deleted");
        // Only ever a directory under the data dir: the name must pass the rule.
        match self.shared.config.workspace_dir(&record.name) {
            Ok(workspace) => match tokio::fs::remove_dir_all(&workspace).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(env = %id, error = %e, "could not remove the workspace"),
            },
            Err(e) => {
                tracing::error!(env = %id, error = %e, "not removing a workspace outside the data directory")
            }
        }
        tracing::info!(env = %id, "environment deleted");
        Ok(())
    }

    fn spawn_converge(&self, env: Arc<Env>) {
        let this = self.clone();
        let span = tracing::info_span!("converge", env = %env.id);
        self.shared.tasks.spawn(
            async move {
                let _op = env.op.lock().await;
                this.converge_locked(&env).await;
            }
            .instrument(span),
        );
    }

    /// Stops every instance without changing desired states (host shutdown), then
    /// waits for background work to finish.
    pub async fn shutdown(&self) {
        self.shared.closing.cancel();
        let envs: Vec<Arc<Env>> = self.envs().values().cloned().collect();
        for env in envs {
            // Abandon operations in flight (a hung start must not hold shutdown).
            env.deleting.cancel();
            let _op = env.op.lock().await;
            if let Some(handle) = self.take_instance(&env) {
                let timeout = self.shared.config.lifecycle.stop_timeout;
                if let Err(e) = handle.call(Call::Close, timeout).await {
                    let error = crate::untrusted::logged(&e.to_string());
                    tracing::warn!(env = %env.id, %error, "provider close failed");
                }
                handle.shutdown().await;
            }
            env.hub.close("host shutting down");
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

fn validate_name(name: &str) -> Result<(), LifecycleError> {
    crate::names::validate("environment", name).map_err(|e| LifecycleError::Invalid(e.to_string()))
}

/// RFC 7386 merge patch: `null` removes a key, objects merge, anything else replaces.
fn merge_patch(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(obj) = slot {
                    merge_patch(obj, inner);
                }
            }
            other => {
                target.insert(key, other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let patch = json!({"a": null, "b": {"c": 9}, "f": [1]})
            .as_object()
            .cloned()
            .unwrap_or_default();
        merge_patch(&mut target, patch);
        assert_eq!(
            Value::Object(target),
            json!({"b": {"c": 9, "d": 3}, "e": 4, "f": [1]})
        );
    }
}
