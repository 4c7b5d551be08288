//! The lifecycle manager: environments as durable objects with a desired state (in
//! the record) and a live status, driven toward each other one operation at a time
//! per environment, every provider call under a timeout.
//!
//! It is the only layer the API calls. It drives the engine (one provider instance
//! per running environment), the store (records), and the relay (connections),
//! and it mints the runtime token of each start.

mod messages;
mod sessions;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth;
use crate::broker::Capabilities;
use crate::broker::process::ProcessBroker;
use crate::config::ServeConfig;
use crate::engine::{
    Call, CallError, Engine, InitVars, InstanceSetup, ProviderEvent, ProviderHandle, Reply,
    RuntimePort,
};
use crate::relay::{CLOSE_GONE, Hub, Relay};
use crate::store::{DesiredState, Record, Store, StoreError};

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
    /// Persisting failed.
    #[error("persisting the change failed: {0}")]
    Store(StoreError),
}

impl From<StoreError> for LifecycleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::NameTaken(_) => Self::Conflict(e.to_string()),
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
}

#[derive(Debug, Default)]
struct Live {
    status: Status,
    provider: Option<ProviderHandle>,
    metadata: BTreeMap<String, String>,
}

/// One environment's live side.
#[derive(Debug)]
struct Env {
    id: String,
    /// Serialises operations (start, stop, delete) on this environment.
    op: tokio::sync::Mutex<()>,
    live: Mutex<Live>,
    hub: Arc<Hub>,
}

impl Env {
    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        let relay = Relay::default();
        let envs = store
            .list()
            .into_iter()
            .map(|r| {
                let env = Arc::new(Env {
                    id: r.id.clone(),
                    op: tokio::sync::Mutex::new(()),
                    live: Mutex::new(Live::default()),
                    hub: relay.hub(&r.id),
                });
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

    /// The engine, for listing providers.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The operator settings.
    pub fn config(&self) -> &ServeConfig {
        &self.shared.config
    }

    fn envs(&self) -> MutexGuard<'_, HashMap<String, Arc<Env>>> {
        self.shared.envs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn env(&self, id: &str) -> Option<Arc<Env>> {
        self.envs().get(id).cloned()
    }

    fn view_of(&self, env: &Env, record: Record) -> EnvironmentView {
        let live = env.live();
        EnvironmentView::new(
            record,
            live.status,
            env.hub.runtime_connected(),
            live.metadata.clone(),
            live.provider.as_ref().map(|p| p.version.clone()),
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
        let record = self
            .shared
            .store
            .get(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let env = self
            .env(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        Ok(self.view_of(&env, record))
    }

    /// Creates an environment (and starts it if asked).
    pub async fn create(&self, req: CreateRequest) -> Result<EnvironmentView, LifecycleError> {
        validate_name(&req.name)?;
        if self.shared.engine.provider(&req.provider).is_none() {
            return Err(LifecycleError::Invalid(format!(
                "no provider named {:?} is loaded",
                req.provider
            )));
        }
        let now = crate::store::now();
        let record = Record {
            id: uuid::Uuid::new_v4().to_string(),
            name: req.name,
            provider: req.provider,
            config: req.config,
            desired_state: if req.start {
                DesiredState::Running
            } else {
                DesiredState::Stopped
            },
            resource_id: None,
            workspace_path: None,
            provider_state: BTreeMap::new(),
            runtime_generation: 0,
            runtime_token_sha256: None,
            last_error: None,
            restarts: 0,
            created_at: now.clone(),
            updated_at: now,
            extra: Map::new(),
        };
        let id = record.id.clone();
        self.shared.store.insert(record).await?;
        let env = Arc::new(Env {
            id: id.clone(),
            op: tokio::sync::Mutex::new(()),
            live: Mutex::new(Live::default()),
            hub: self.shared.relay.hub(&id),
        });
        self.envs().insert(id.clone(), env.clone());
        tracing::info!(env = %id, "environment created");
        if req.start {
            self.spawn_converge(env);
        }
        self.get(&id)
    }

    /// Applies a JSON merge patch to an environment's config (used from its next start).
    pub async fn patch_config(
        &self,
        id: &str,
        patch: Map<String, Value>,
    ) -> Result<EnvironmentView, LifecycleError> {
        self.shared
            .store
            .update(id, |r| merge_patch(&mut r.config, patch))
            .await?;
        self.get(id)
    }

    /// Sets the desired state and lets the environment converge on it.
    pub async fn set_desired(
        &self,
        id: &str,
        desired: DesiredState,
    ) -> Result<EnvironmentView, LifecycleError> {
        let env = self
            .env(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        self.shared
            .store
            .update(id, |r| r.desired_state = desired)
            .await?;
        self.spawn_converge(env);
        self.get(id)
    }

    /// Stops (if running) and starts again, with a fresh runtime token.
    pub async fn restart(&self, id: &str) -> Result<EnvironmentView, LifecycleError> {
        let env = self
            .env(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        self.shared
            .store
            .update(id, |r| r.desired_state = DesiredState::Running)
            .await?;
        let this = self.clone();
        let span = tracing::info_span!("restart", env = %id);
        self.shared.tasks.spawn(
            async move {
                let _op = env.op.lock().await;
                if env.live().provider.is_some() {
                    this.set_status(&env, Status::Restarting);
                    this.stop_locked(&env, false).await;
                }
                this.converge_locked(&env).await;
            }
            .instrument(span),
        );
        self.get(id)
    }

    /// Stops an environment, lets its provider remove the resource, and forgets it.
    pub async fn delete(&self, id: &str) -> Result<(), LifecycleError> {
        let env = self
            .env(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let _op = env.op.lock().await;
        let record = self.shared.store.remove(id).await?;
        self.stop_locked(&env, true).await;
        self.envs().remove(id);
        self.shared.relay.remove(id, "environment deleted");
        let workspace = self.shared.config.workspace_dir(&record.name);
        match tokio::fs::remove_dir_all(&workspace).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(env = %id, error = %e, "could not remove the workspace"),
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

    /// Moves `env` toward its desired state; the caller holds its operation lock.
    async fn converge_locked(&self, env: &Env) {
        let Some(record) = self.shared.store.get(&env.id) else {
            return;
        };
        let (running, status) = {
            let live = env.live();
            (live.provider.is_some(), live.status)
        };
        match (record.desired_state, running) {
            (DesiredState::Running, false) => self.start_locked(env, record).await,
            (DesiredState::Stopped, true) => self.stop_locked(env, false).await,
            // Stopping an environment that failed acknowledges it; `lastError` stays.
            (DesiredState::Stopped, false)
                if !matches!(status, Status::Created | Status::Stopped) =>
            {
                self.set_status(env, Status::Stopped);
            }
            _ => {}
        }
    }

    async fn start_locked(&self, env: &Env, record: Record) {
        self.set_status(env, Status::Starting);
        if let Err(reason) = self.try_start(env, record).await {
            tracing::error!(env = %env.id, %reason, "start failed");
            self.fail(env, reason).await;
        }
    }

    async fn try_start(&self, env: &Env, record: Record) -> Result<(), String> {
        let s = &self.shared;
        let provider = s
            .engine
            .provider(&record.provider)
            .ok_or_else(|| format!("provider {:?} is not loaded", record.provider))?;
        let token = auth::mint_runtime_token(record.runtime_generation + 1);
        s.store
            .update(&env.id, |r| {
                r.runtime_generation = token.generation;
                r.runtime_token_sha256 = Some(token.sha256.clone());
                r.last_error = None;
            })
            .await
            .map_err(|e| e.to_string())?;
        let workspace = s.config.workspace_dir(&record.name);
        tokio::fs::create_dir_all(&workspace)
            .await
            .map_err(|e| format!("creating workspace {}: {e}", workspace.display()))?;
        let caps = Capabilities::new(
            provider.description.request(),
            s.config.grant_for(&provider.description.name),
        );
        let limits = &s.config.limits;
        let broker = ProcessBroker::new(
            env.id.clone(),
            caps,
            workspace.clone(),
            limits.max_processes,
            limits.output_tail_bytes,
        );
        let (events, rx) = mpsc::unbounded_channel();
        s.tasks
            .spawn(persist_events(self.clone(), env.id.clone(), rx));
        let setup = InstanceSetup {
            env_id: env.id.clone(),
            workspace: workspace.clone(),
            state_dir: s.config.provider_state_dir(&provider.description.name),
            broker,
            runtime: Arc::new(HubPort(env.hub.clone())),
            events,
            state: record.provider_state.clone(),
        };
        let handle = s
            .engine
            .instantiate(&provider, setup)
            .await
            .map_err(|e| e.to_string())?;
        let init = InitVars {
            environment_id: env.id.clone(),
            environment_name: record.name.clone(),
            project_path: record
                .config
                .get("projectPath")
                .and_then(Value::as_str)
                .map(str::to_owned),
            config: record.config.clone(),
            resource_id: record.resource_id.clone(),
            runtime_url: format!("{}/ws/runtime/{}", s.runtime_base, env.id),
            runtime_token: token.token,
            workspace_host_path: workspace.display().to_string(),
        };
        match handle
            .call(
                Call::Start(Box::new(init)),
                s.config.lifecycle.start_timeout,
            )
            .await
        {
            Ok(Reply::Started(outcome)) => {
                s.store
                    .update(&env.id, |r| {
                        r.resource_id = Some(outcome.resource_id.clone());
                        r.workspace_path = Some(outcome.workspace_path.clone());
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                {
                    let mut live = env.live();
                    live.provider = Some(handle);
                    live.metadata = outcome.metadata;
                }
                tracing::info!(env = %env.id, resource = %outcome.resource_id, "environment running");
                self.set_status(env, Status::Running);
                Ok(())
            }
            Ok(other) => {
                handle.shutdown().await;
                Err(format!("provider answered start with {other:?}"))
            }
            Err(e) => {
                handle.shutdown().await;
                Err(format!("provider start failed: {e}"))
            }
        }
    }

    /// Stops the provider instance (`destroy`: and its resource); holds the op lock.
    async fn stop_locked(&self, env: &Env, destroy: bool) {
        let handle = env.live().provider.take();
        let Some(handle) = handle else {
            return;
        };
        if !destroy {
            self.set_status(env, Status::Stopping);
        }
        let call = if destroy {
            Call::Close { destroy: true }
        } else {
            Call::Stop
        };
        let timeout = self.shared.config.lifecycle.stop_timeout;
        let result = handle.call(call, timeout).await;
        handle.shutdown().await;
        env.hub.close_runtime(CLOSE_GONE, "environment stopped");
        env.live().metadata.clear();
        if destroy {
            return;
        }
        match result {
            Ok(_) => self.set_status(env, Status::Stopped),
            Err(e) => {
                tracing::warn!(env = %env.id, error = %e, "provider stop failed");
                self.fail(env, format!("provider stop failed: {e}")).await;
            }
        }
    }

    async fn fail(&self, env: &Env, reason: String) {
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

    fn set_status(&self, env: &Env, status: Status) {
        env.live().status = status;
        self.announce(env);
    }

    /// Sends the current status to every app of `env`.
    fn announce(&self, env: &Env) {
        if let Some(record) = self.shared.store.get(&env.id) {
            let view = self.view_of(env, record);
            env.hub.broadcast(view.status_event());
        }
    }

    /// A call into a running instance trapped or timed out: the instance is dead,
    /// so the environment is put in `error` with the reason.
    fn instance_failed(&self, env: Arc<Env>, handle: ProviderHandle, err: CallError) {
        let this = self.clone();
        self.shared.tasks.spawn(async move {
            let _op = env.op.lock().await;
            let current = env.live().provider.clone();
            if current.is_some_and(|h| h.same_instance(&handle)) {
                env.live().provider = None;
                handle.shutdown().await;
                env.hub.close_runtime(CLOSE_GONE, "provider failed");
                this.fail(&env, err.to_string()).await;
            }
        });
    }

    /// Stops every instance without changing desired states (host shutdown), then
    /// waits for background work to finish.
    pub async fn shutdown(&self) {
        let envs: Vec<Arc<Env>> = self.envs().values().cloned().collect();
        for env in envs {
            let _op = env.op.lock().await;
            let handle = env.live().provider.take();
            if let Some(handle) = handle {
                let timeout = self.shared.config.lifecycle.stop_timeout;
                if let Err(e) = handle.call(Call::Close { destroy: false }, timeout).await {
                    tracing::warn!(env = %env.id, error = %e, "provider close failed");
                }
                handle.shutdown().await;
            }
            env.hub.close("host shutting down");
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

async fn persist_events(
    manager: Manager,
    id: String,
    mut rx: mpsc::UnboundedReceiver<ProviderEvent>,
) {
    while let Some(event) = rx.recv().await {
        let result = manager
            .shared
            .store
            .update(&id, |r| match event {
                ProviderEvent::ResourceId(rid) => r.resource_id = Some(rid),
                ProviderEvent::StateSet(k, v) => {
                    r.provider_state.insert(k, v);
                }
                ProviderEvent::StateRemoved(k) => {
                    r.provider_state.remove(&k);
                }
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(env = %id, error = %e, "provider state not persisted");
        }
    }
}

fn validate_name(name: &str) -> Result<(), LifecycleError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(LifecycleError::Invalid(format!(
            "invalid name {name:?}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
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
    fn names_must_be_safe_directory_names() {
        for good in ["a", "dev-1", "x.y_z", "A9"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "..", ".hidden", "a/b", "a b", "-x", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

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
