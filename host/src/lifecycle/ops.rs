//! Operations on one environment — converge, start, stop, fail — each run while
//! holding the environment's operation lock, every provider call under a timeout and
//! every start and stop under a deadline (`deadline`).

use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Status;
use super::deadline::{GRACE, overran, shut_down_within};
use super::driver::Driver;
use super::envs::Env;
use super::messages;
use super::progress::StartPhase;
use crate::auth;
use crate::broker::{PROJECT_PATH_DIR, Refusals, Request};
use crate::engine::{
    Call, CallError, InitVars, InstanceSetup, LoadedProvider, ProviderHandle, Reply, RuntimePort,
    StartOutcome, StateReader,
};
use crate::relay::{AppSessions, CLOSE_GONE, CLOSE_REPLACED, Hub};
use crate::store::{DesiredState, Record, StopReason};

impl Driver {
    /// Moves `env` toward its desired state; the caller holds its operation lock.
    pub(super) async fn converge_locked(&self, env: &Arc<Env>) {
        let Some(record) = self.shared.store.get(&env.id) else {
            return;
        };
        let (running, status) = {
            let live = env.live();
            (live.provider.is_some(), live.status)
        };
        match (record.desired_state, running) {
            (DesiredState::Running, false) => {
                // In a cluster, only on the host holding its lease.
                if !self.may_run(env).await {
                    return;
                }
                // A failed first start is left in `error` for a person to look at;
                // the restart policy covers environments that were running.
                let _ = self.start_locked(env, record).await;
            }
            (DesiredState::Stopped, true) => {
                self.stop_locked(env).await;
                self.release(env).await;
            }
            // Stopping an environment that failed acknowledges it; `lastError` stays.
            (DesiredState::Stopped, false)
                if !matches!(status, Status::Created | Status::Stopped) =>
            {
                self.set_status(env, Status::Stopped);
                self.release(env).await;
            }
            _ => {}
        }
    }

    /// Starts `env`; on failure it is left in `error` and the reason returned. The
    /// whole start — instantiating, the provider's start — has the start timeout.
    pub(super) async fn start_locked(&self, env: &Arc<Env>, record: Record) -> Result<(), String> {
        self.set_status(env, Status::Starting);
        let timeout = self.shared.config.get().lifecycle.start_timeout;
        let deadline = Instant::now() + timeout;
        let attempt =
            tokio::time::timeout_at(deadline + GRACE, self.try_start(env, record, deadline));
        let result = tokio::select! {
            r = attempt => r.unwrap_or_else(|_| Err(overran("start", timeout))),
            _ = env.deleting.cancelled() => Err("the environment is being deleted".to_owned()),
        };
        if let Err(reason) = &result {
            let shown = crate::untrusted::logged(reason);
            tracing::error!(env = %env.id, reason = %shown, "start failed");
            self.fail(env, reason.clone()).await;
        }
        result
    }

    async fn try_start(
        &self,
        env: &Arc<Env>,
        record: Record,
        deadline: Instant,
    ) -> Result<(), String> {
        let s = &self.shared;
        let provider = s
            .engine
            .provider(&record.provider)
            .ok_or_else(|| super::provider_status::not_loaded(&record.provider))?;
        tracing::info!(env = %env.id, provider = %provider.description.name, version = %provider.description.version, source = ?provider.source, "starting on provider");
        let token = auth::mint_runtime_token(record.runtime_generation + 1);
        let host = s.cluster.as_ref().map(|c| c.host_id().to_owned());
        let written = s.store.update(&env.id, |r| {
            r.last_host = host;
            r.runtime_generation = token.generation;
            r.runtime_token_sha256 = Some(token.sha256.clone());
            r.last_error = None;
            r.stop_reason = None;
        });
        // The first poll puts the new token in force (in memory); making it durable
        // overlaps with instantiating and the provider's start instead of coming
        // before them. That is safe: until the write is durable a crash loses only a
        // token whose runtime dies with the host (the spawn guard), and the start
        // does not count as done before it is.
        // The runtime must not be started before its token is in force.
        let mut written = std::pin::pin!(written);
        let sha = Some(token.sha256.as_str());
        let first = crate::store::in_force(written.as_mut(), || {
            s.store
                .peek(&env.id, |r| r.runtime_token_sha256.as_deref() == sha)
                == Some(true)
        })
        .await;
        // A runtime of an earlier start (say, one that outlived a host crash) is now
        // stale: cut it off so it reconnects, is refused, and exits.
        env.hub
            .close_runtime(CLOSE_REPLACED, "a new start superseded this runtime");
        let launched = self.launch(env, &record, &provider, token.token, deadline);
        let (written, launched) = match first {
            std::task::Poll::Ready(Err(e)) => return Err(e.to_string()),
            std::task::Poll::Ready(written) => (written, launched.await),
            std::task::Poll::Pending => tokio::join!(written, launched),
        };
        let (handle, outcome) = launched?;
        if let Err(e) = written {
            shut_down_within(&env.id, &handle, GRACE).await;
            return Err(e.to_string());
        }
        let persisted = s
            .store
            .update(&env.id, |r| {
                r.resource_id = Some(outcome.resource_id.clone());
                r.workspace_path = Some(outcome.workspace_path.clone());
            })
            .await;
        if let Err(e) = persisted {
            shut_down_within(&env.id, &handle, GRACE).await;
            return Err(e.to_string());
        }
        let supervision = CancellationToken::new();
        {
            let mut live = env.live();
            live.provider = Some(handle.clone());
            live.supervision = Some(supervision.clone());
            live.metadata = outcome.metadata;
        }
        // Apps' messages go where this instance says, whatever is loaded later.
        (env.provider_types).set(messages::provider_types(
            &provider.description.message_types,
        ));
        let resource = crate::untrusted::logged(&outcome.resource_id);
        tracing::info!(env = %env.id, %resource, "environment running");
        self.provider_started(env);
        // A fresh start counts as activity: the idle countdown starts now.
        env.hub.activity().touch();
        self.supervise(env.clone(), handle, supervision);
        Ok(())
    }

    /// Instantiates `provider` for `env` and has it start the environment with
    /// runtime token `token`, within `deadline`; on failure the instance is shut down.
    async fn launch(
        &self,
        env: &Arc<Env>,
        record: &Record,
        provider: &LoadedProvider,
        token: String,
        deadline: Instant,
    ) -> Result<(ProviderHandle, StartOutcome), String> {
        let s = &self.shared;
        let timeout = s.config.get().lifecycle.start_timeout;
        // What the broker refuses this instance, added to a failed start's error: a
        // provider often reports a refusal in its own words.
        let refusals = Refusals::default();
        let instantiating = self.instantiate(env, record, provider, refusals.clone(), None);
        let handle = tokio::time::timeout_at(deadline, instantiating)
            .await
            .map_err(|_| overran("start (instantiating the provider)", timeout))??;
        let init = self.init_vars(
            env,
            record,
            format!("{}/ws/runtime/{}", s.runtime_base, env.id),
            token,
        );
        self.enter_phase(env, StartPhase::ProviderStart);
        // The provider has what is left of the start's time.
        let call = handle.call(
            Call::Start(Box::new(init)),
            deadline.saturating_duration_since(Instant::now()),
        );
        let outcome = tokio::select! {
            r = call => r,
            _ = env.deleting.cancelled() => Err(CallError::Closed("deleted".into())),
        };
        let failed = match outcome {
            Ok(Reply::Started(outcome)) => return Ok((handle, outcome)),
            Ok(other) => format!("provider answered start with {other:?}"),
            // Named by the configured timeout, not by what was left of it.
            Err(CallError::TimedOut(_)) => with_refusals(
                format!("provider start failed: {}", CallError::TimedOut(timeout)),
                &refusals,
            ),
            Err(e) => with_refusals(format!("provider start failed: {e}"), &refusals),
        };
        shut_down_within(&env.id, &handle, GRACE).await;
        Err(failed)
    }

    /// Starts an instance of `provider` for `env`, with the capabilities the operator
    /// grants it and the environment's workspace (or `workspace`, a removal's
    /// scratch directory) and persisted state.
    pub(super) async fn instantiate(
        &self,
        env: &Arc<Env>,
        record: &Record,
        provider: &LoadedProvider,
        refusals: Refusals,
        workspace: Option<&std::path::Path>,
    ) -> Result<ProviderHandle, String> {
        let s = &self.shared;
        // One snapshot of the operator's settings for the whole instance.
        let config = s.config.get();
        let workspace = match workspace {
            Some(w) => w.to_owned(),
            None => config
                .workspace_dir(&record.name)
                .map_err(|e| e.to_string())?,
        };
        // It and its parents must be the host's own directories, not links to
        // elsewhere: made by a walk that follows none (see `own_dirs`).
        let workspace_made = crate::own_dirs::create(&config.data_dir, &workspace)
            .and_then(|dir| dir.identity())
            .map_err(|e| format!("creating workspace {}: {e}", workspace.display()))?;
        let state_dir = config
            .provider_state_dir(&provider.description.name)
            .map_err(|e| e.to_string())?;
        // Made here, through no link (see `own_dirs`), and the provider's alone (it
        // may keep its backend's credentials there): no other local user lists or
        // reads it, whatever the umask.
        // `.codebolt/provider-state` too: its listing names the providers in use.
        let parts = state_dir.parent().and_then(|parent| {
            let above = parent.parent()?;
            Some((above, parent.file_name()?, state_dir.file_name()?))
        });
        let Some((above, parent, name)) = parts else {
            return Err(format!(
                "provider state {}: no directory",
                state_dir.display()
            ));
        };
        let state_made = crate::own_dirs::create(&config.data_dir, above)
            .and_then(|dir| dir.child_with_mode(&parent.to_string_lossy(), 0o700))
            .and_then(|dir| dir.child_with_mode(&name.to_string_lossy(), 0o700))
            .and_then(|dir| dir.identity())
            .map_err(|e| format!("provider state {}: {e}", state_dir.display()))?;
        let (state, changes) = crate::engine::persisted::channel(record.provider_state.clone());
        s.tasks
            .spawn(persist_state(self.clone(), env.id.clone(), changes));
        // The engine builds the instance's capabilities: what it asks for, as far as
        // the operator grants it.
        let setup = InstanceSetup {
            env_id: env.id.clone(),
            workspace,
            state_dir,
            made: Some([workspace_made, state_made]),
            request: request_for(provider, record),
            grant: config.grant_for(&provider.description.name),
            runtime: Arc::new(HubPort(env.hub.clone())),
            state,
            refusals,
        };
        s.engine
            .instantiate(provider, setup)
            .await
            .map_err(|e| e.to_string())
    }

    /// What the provider is told about `record`; the runtime fields are empty when
    /// no runtime will start (a destroy).
    fn init_vars(
        &self,
        env: &Env,
        record: &Record,
        runtime_url: String,
        runtime_token: String,
    ) -> InitVars {
        InitVars {
            environment_id: env.id.clone(),
            environment_name: record.name.clone(),
            project_path: project_path(record),
            // The operator's config for this provider (API keys, ...) joins here only.
            config: self.shared.config.get().merged_config(
                &record.provider,
                record.template(),
                &record.config,
            ),
            resource_id: record.resource_id.clone(),
            runtime_url,
            runtime_token,
            // Records in force passed the name rule; `instantiate` refuses any other.
            workspace_host_path: (self.shared.config.get().workspace_dir(&record.name))
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }
    }

    /// Stops the provider instance, keeping the resource; holds the op lock. The
    /// provider's stop and the instance's shutdown together have the stop timeout.
    pub(super) async fn stop_locked(&self, env: &Env) {
        let Some(handle) = self.take_instance(env) else {
            return;
        };
        self.set_status(env, Status::Stopping);
        let timeout = self.shared.config.get().lifecycle.stop_timeout;
        let stop = async {
            let result = handle.call(Call::Stop, timeout).await;
            handle.shutdown().await;
            result
        };
        let result = tokio::time::timeout(timeout + GRACE, stop).await;
        // An idle stop had nothing in flight (no frame for `idleStopSecs`, the runtime
        // not busy), so its apps' sessions may resume and wake it; any other stop may
        // have taken requests down with the runtime, and the apps must know.
        let idle = (self.shared.store).peek(&env.id, |r| {
            r.desired_state == DesiredState::Stopped && r.stop_reason == Some(StopReason::Idle)
        });
        let apps = if idle == Some(true) {
            AppSessions::Keep
        } else {
            AppSessions::End
        };
        env.hub.end_runtime(CLOSE_GONE, "environment stopped", apps);
        let failure = match result {
            Ok(Ok(_)) => return self.set_status(env, Status::Stopped),
            Ok(Err(e)) => format!("provider stop failed: {e}"),
            Err(_) => overran("stop", timeout),
        };
        let error = crate::untrusted::logged(&failure);
        tracing::warn!(env = %env.id, %error, "stop failed");
        self.fail(env, failure).await;
    }

    /// Has the provider remove the resource of a deleted environment: through the
    /// running instance, or through a fresh one when the provider's world can destroy
    /// without a start. The record is already gone, so a failure that a fresh
    /// instance could retry is kept in the removals journal (`removals`), which the
    /// retry task works through; one that cannot be retried is logged.
    pub(super) async fn destroy_locked(&self, env: &Arc<Env>, record: &Record) {
        let handle = match self.take_instance(env) {
            Some(handle) => Ok(Some(handle)),
            None => self.destroyer(env, record, None).await,
        };
        let failure = match handle {
            Ok(Some(handle)) => {
                let result = self.destroy_with(env, record, &handle, None).await;
                shut_down_within(&env.id, &handle, GRACE).await;
                result.err()
            }
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if let Some(error) = failure {
            self.removal_failed(env, record, &error);
        }
        env.hub
            .end_runtime(CLOSE_GONE, "environment deleted", AppSessions::End);
    }

    /// Calls the provider's destroy of `record` on `handle` under the stop timeout;
    /// `workspace` is the instance's when it is not the environment's (a retry's).
    pub(super) async fn destroy_with(
        &self,
        env: &Env,
        record: &Record,
        handle: &ProviderHandle,
        workspace: Option<&std::path::Path>,
    ) -> Result<(), String> {
        let resource = record.resource_id.as_deref().map(crate::untrusted::logged);
        tracing::info!(env = %env.id, resource = ?resource, "the provider removes the resource");
        let mut init = self.init_vars(env, record, String::new(), String::new());
        if let Some(workspace) = workspace {
            init.workspace_host_path = workspace.display().to_string();
        }
        let timeout = self.shared.config.get().lifecycle.stop_timeout;
        (handle.call(Call::Destroy(Box::new(init)), timeout).await)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Keeps a failed removal in the journal when a fresh instance can retry it; else
    /// (or when the journal does not take it) a person must remove the resource.
    fn removal_failed(&self, env: &Env, record: &Record, error: &str) {
        let shown = crate::untrusted::logged(error);
        let resource = record.resource_id.as_deref().map(crate::untrusted::logged);
        let retriable = record.resource_id.is_some()
            && (self.shared.engine.provider(&record.provider))
                .is_none_or(|p| p.world.destroys_without_start());
        if !retriable {
            tracing::warn!(env = %env.id, resource = ?resource, error = %shown,
                "the provider could not remove the resource; remove it by hand");
            return;
        }
        let base = self.shared.config.get().lifecycle.removal_retry;
        match self.shared.removals.failed(record, error, base) {
            Ok((attempts, wait)) => {
                tracing::warn!(env = %env.id, resource = ?resource, error = %shown, attempts, retry_in_secs = wait.as_secs(),
                "the provider could not remove the resource; tried again later")
            }
            Err(e) => {
                tracing::error!(env = %env.id, resource = ?resource, error = %shown, journal = %e,
                "the provider could not remove the resource and the removals journal did not take it; remove it by hand")
            }
        }
    }

    /// A fresh instance to destroy a stopped environment's resource (in `workspace`
    /// when not the environment's: a retry's scratch directory): `None` if there is
    /// no resource or its provider's world cannot destroy without a start; an error if
    /// it should and cannot (the provider not loaded, no instance made).
    pub(super) async fn destroyer(
        &self,
        env: &Arc<Env>,
        record: &Record,
        workspace: Option<&std::path::Path>,
    ) -> Result<Option<ProviderHandle>, String> {
        if record.resource_id.is_none() {
            return Ok(None);
        }
        let Some(provider) = self.shared.engine.provider(&record.provider) else {
            let name = crate::untrusted::named(&record.provider);
            return Err(format!("provider {name} is not loaded"));
        };
        if !provider.world.destroys_without_start() {
            return Ok(None);
        }
        match (self.instantiate(env, record, &provider, Refusals::default(), workspace)).await {
            Ok(handle) => Ok(Some(handle)),
            Err(e) => {
                tracing::warn!(env = %env.id, error = %e, "no instance to remove the resource with");
                Err(format!("no instance to remove the resource with: {e}"))
            }
        }
    }
}

/// `reason` with what the broker refused the instance, when the provider's own
/// words do not already say it: the refusal names the `tether.toml` key to set.
fn with_refusals(reason: String, refusals: &Refusals) -> String {
    let missing: Vec<String> = (refusals.take().into_iter())
        .filter(|r| !reason.contains(r.as_str()))
        .collect();
    if missing.is_empty() {
        reason
    } else {
        format!("{reason} (refused by the host: {})", missing.join("; "))
    }
}

/// The environment's `config.projectPath`, if it names one.
fn project_path(record: &Record) -> Option<String> {
    record
        .config
        .get("projectPath")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The provider's request for this environment: `{projectPath}` becomes the project
/// path with symlinks resolved (so the grant is checked against where it really
/// leads), or is dropped when the environment names no existing project.
fn request_for(provider: &LoadedProvider, record: &Record) -> Request {
    let mut request = provider.description.request();
    let project = project_path(record)
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map(|p| p.display().to_string());
    request.directories = (request.directories.into_iter())
        .filter_map(|d| {
            if d == PROJECT_PATH_DIR {
                project.clone()
            } else {
                Some(d)
            }
        })
        .collect();
    request
}

/// Persists what the instance sets, one write per batch of coalesced changes, until
/// the instance is gone.
async fn persist_state(driver: Driver, id: String, changes: StateReader) {
    while let Some(batch) = changes.next().await {
        let result = driver
            .shared
            .store
            .update(&id, |r| {
                if let Some(rid) = batch.resource_id {
                    r.resource_id = Some(rid);
                }
                if let Some(values) = batch.values {
                    r.provider_state = values;
                }
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(env = %id, error = %e, "provider state not persisted");
        }
    }
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
    fn max_message_bytes(&self) -> usize {
        self.0.max_message_bytes()
    }
}
