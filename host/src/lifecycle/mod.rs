//! The lifecycle manager: environments as durable objects with a desired state (in
//! the record) and a live status, driven toward each other one operation at a time
//! per environment, every provider call under a timeout.
//!
//! It is the only layer the API calls. It drives the engine (one provider instance
//! per running environment), the store (records), and the relay (it admits each
//! peer; the relay carries the frames), and it mints the runtime token of each start.
//!
//! [`Manager`] is a front over parts that each own their state: `envs` (the live
//! side of every environment and its hub), `driver` (starting, stopping,
//! supervising and restarting instances, with `ops` and `supervisor`; `deadline`
//! bounds every start and stop and holds the admin's force delete), `providers`
//! (what the loaded providers are and are granted, and their hot reload), `peers`
//! (admitting runtimes and apps, answering provider-handled app messages),
//! `idle` (stopping environments nobody uses), `wake` (starting them again on an
//! app's connect), `events` (every change published for `/ws/events`),
//! `removals` with `retry_removals` (failed removals of deleted environments'
//! resources, kept in `.codebolt/removals.json` and tried again with backoff),
//! `reconcile` (outside edits of the records file) and
//! `config_reload` (outside edits of `tether.toml`, or `SIGHUP`: the settings in
//! force, `live_config`, are swapped for the next start of each environment).

mod cluster;
mod config_reload;
mod deadline;
mod driver;
mod envs;
mod events;
mod idle;
mod live_config;
mod messages;
mod ops;
mod peers;
mod pending_removals;
mod progress;
mod provider_install;
mod provider_reload;
mod provider_status;
mod providers;
mod provision;
mod quotas;
mod reconcile;
mod removals;
mod retry_removals;
mod supervisor;
mod view;
mod wake;
mod workspaces;

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::audit::{AuditLog, Outcome, action};
use crate::cluster::Cluster;
use crate::config::ServeConfig;
use crate::engine::Engine;
use crate::logs::{EnvLogs, Follow};
use crate::relay::Relay;
use crate::store::{Record, StopReason, StorageProblem, Store, StoreError, validate};
use crate::tenancy::Principal;
use crate::untrusted;
use driver::Driver;
use envs::{Env, Environments};
use providers::Providers;
use provision::KeyLocks;
use quotas::{Admitted, Quotas};

pub(crate) use crate::store::{DesiredState, RestartPolicy};
pub(crate) use events::EventStream;
pub(crate) use live_config::ConfigStatus;
use live_config::LiveConfig;
pub(crate) use pending_removals::RemovalView;
pub(crate) use providers::{ProviderView, digest as providers_digest};
pub(crate) use provision::ProvisionTarget;
pub(crate) use view::{EnvironmentView, Status};

/// Why a lifecycle request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LifecycleError {
    /// No such environment. The id is the caller's (a path, a body field of up to
    /// 2 MiB): quoted cut and escaped.
    #[error("no environment with id {}", untrusted::named(.0))]
    NotFound(String),
    /// No such template is defined.
    #[error("{0}")]
    NoTemplate(String),
    /// No such provider is loaded (the message says what is known of it).
    #[error("{0}")]
    NoProvider(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (a taken name, a stopped environment).
    #[error("{0}")]
    Conflict(String),
    /// Cluster mode: another host runs the environment; its peers connect there.
    #[error("environment {id} runs on host {host}{}: connect there", at_url(.url))]
    Elsewhere {
        /// The environment.
        id: String,
        /// The host running it.
        host: String,
        /// Where that host is reached (`http(s)://`): the URL its lease gives, when
        /// that host publishes it as its own; otherwise why not (anyone who can write
        /// the leases bucket could have put another there), and it is not said.
        url: Result<String, String>,
    },
    /// A runtime presented the token of an earlier start (its runtime outlived it).
    #[error("{0}")]
    Unauthorized(String),
    /// A runtime presented a token of no start at all, or for an id that is no
    /// environment's: a guess, counted against its address like a wrong API token.
    #[error("{0}")]
    InvalidToken(String),
    /// The environment has its maximum number of connections.
    #[error("{0}")]
    TooManyConnections(String),
    /// An app connected through a template to an environment its user stopped on
    /// purpose, without asking to start it.
    #[error("{0}")]
    StoppedOnPurpose(String),
    /// The change would take the owner past one of their limits.
    #[error("{owner} is at the {quota} quota: {used} of {limit} in use")]
    QuotaExceeded {
        /// The setting (`max_environments`, `max_running`, `max_connections`).
        quota: &'static str,
        /// Whose.
        owner: String,
        /// Its value for them.
        limit: usize,
        /// How many they have.
        used: usize,
    },
    /// The caller may not make this change (a user's patch of an environment
    /// provisioned from a template, whose settings are the operator's).
    #[error("{0}")]
    Forbidden(String),
    /// The owner may not create (or start) environments with this provider
    /// (`[tenancy] providers`).
    #[error("{owner} may not use provider {provider}: [tenancy] providers allows {allowed}")]
    ProviderNotAllowed {
        /// Whose.
        owner: String,
        /// The provider asked for, quoted for a message.
        provider: String,
        /// The providers allowed, for the message (`none` if none).
        allowed: String,
    },
    /// Cluster mode: what the change needs from the cluster could not be had now
    /// (NATS away, or another host admitting the same user's change for too long).
    #[error("{0}")]
    ClusterUnavailable(String),
    /// Persisting failed.
    #[error("persisting the change failed: {0}")]
    Store(StoreError),
    /// The host could not do its part (writing a file, say); the message says what.
    #[error("{0}")]
    Internal(String),
}

/// " at URL" for [`LifecycleError::Elsewhere`] when the URL is confirmed.
fn at_url(url: &Result<String, String>) -> String {
    url.as_ref()
        .map(|url| format!(" at {url}"))
        .unwrap_or_default()
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
pub(crate) struct CreateRequest {
    /// Unique name (letters, digits, `.`, `_`, `-`; it names a directory).
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// The user it belongs to.
    pub owner: String,
    /// Config handed to the provider.
    pub config: Map<String, Value>,
    /// Start it right away.
    pub start: bool,
    /// What to do when it fails.
    pub restart_policy: RestartPolicy,
    /// Seconds idle before the host stops it (`None` or 0: never).
    pub idle_stop_secs: Option<u64>,
    /// Asked by an admin: the owner's `[tenancy] providers` list does not apply.
    pub by_admin: bool,
}

/// Whether the host needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HealthStatus {
    /// Nothing to report.
    Ok,
    /// Serving, but something needs a person (see `reasons`).
    Degraded,
}

/// The host's own health, for `/healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct HostHealth {
    /// `ok`, or `degraded` when `reasons` is not empty.
    pub status: HealthStatus,
    /// Why it is degraded.
    pub reasons: Vec<String>,
    /// The storage failure in force (the records journal or file cannot be
    /// written), or `null`; while the journal's lasts, changes are refused with
    /// `storage_full` or `storage_unavailable`.
    pub storage: Option<StorageHealth>,
    /// Deleted environments whose provider failed to remove the resource, still
    /// retried in the background (`.codebolt/removals.json`); a reason says so while
    /// any is pending.
    #[serde(rename = "pendingRemovals")]
    pub pending_removals: usize,
}

/// A storage failure, as `/healthz` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StorageHealth {
    /// `full`, `readOnly` or `failing`.
    pub problem: StorageProblem,
    /// The file the host failed to write.
    pub path: String,
    /// What the operating system said.
    pub error: String,
    /// When the failure was first seen (RFC 3339).
    pub since: String,
}

#[derive(Debug)]
struct Shared {
    store: Arc<Store>,
    engine: Arc<Engine>,
    /// The operator's settings in force (reloaded live).
    config: LiveConfig,
    envs: Environments,
    driver: Driver,
    providers: Providers,
    quotas: Quotas,
    /// One lock per provision key.
    provisions: KeyLocks,
    /// Names whose delete is under way (`workspaces.rs`).
    deleting: workspaces::Deleting,
    /// Fired when the host starts shutting down.
    closing: CancellationToken,
}

/// Where this host stands among others.
#[derive(Debug)]
pub(crate) struct Site {
    /// The `ws(s)://host:port` runtimes connect back to.
    pub runtime_base: String,
    /// The cluster this host belongs to; `None` when it runs alone.
    pub cluster: Option<Cluster>,
}

/// A cloneable front of the lifecycle manager.
#[derive(Debug, Clone)]
pub(crate) struct Manager {
    shared: Arc<Shared>,
}

impl Manager {
    /// A manager over loaded providers and opened records, with the settings read
    /// from `config`'s file (whose table is `table`), placed at `site`.
    pub(crate) fn new(
        config: ServeConfig,
        table: toml::Table,
        store: Store,
        engine: Engine,
        site: Site,
        audit: AuditLog,
        logs: Arc<EnvLogs>,
    ) -> Self {
        let relay = Relay::new(config.relay.clone());
        let quotas = Quotas::new(config.tenancy.clone());
        let config = LiveConfig::new(config, table);
        let store = Arc::new(store);
        let engine = Arc::new(engine);
        let ids = store.list().into_iter().map(|r| r.id);
        let envs = Environments::new(relay, logs, ids);
        let removals = Arc::new(removals::Removals::open(
            config.get().codebolt_dir().join("removals.json"),
        ));
        let providers = Providers::new(engine.clone(), config.clone(), site.cluster.clone());
        Self {
            shared: Arc::new(Shared {
                envs,
                driver: Driver::new(
                    config.clone(),
                    store.clone(),
                    engine.clone(),
                    site.runtime_base,
                    audit,
                    site.cluster,
                    removals,
                ),
                quotas,
                provisions: KeyLocks::default(),
                deleting: workspaces::Deleting::default(),
                providers,
                engine,
                config,
                store,
                closing: CancellationToken::new(),
            }),
        }
    }

    fn driver(&self) -> &Driver {
        &self.shared.driver
    }

    /// Starts the host-wide background work: the idle sweep and the retry of
    /// failed removals.
    pub(crate) fn run_background(&self) {
        self.spawn_idle_sweep();
        self.spawn_removal_retries();
    }

    /// After a host start: finishes the deletes a crash interrupted (their
    /// workspaces), then brings every environment whose desired state is `running` up.
    pub(crate) fn recover(&self) {
        workspaces::sweep(&self.shared.config.get(), &self.shared.store);
        for record in self.shared.store.list() {
            if record.desired_state == DesiredState::Running
                && let Some(env) = self.shared.envs.get(&record.id)
            {
                let reason = "the host started and the environment should be running";
                (self.driver()).audit_system(
                    &env.id,
                    action::ENVIRONMENT_RECOVER,
                    Outcome::Ok,
                    reason,
                );
                self.driver().spawn_converge(env);
            }
        }
    }

    /// Whether the host is fully well, and why not.
    pub(crate) fn health(&self) -> HostHealth {
        let mut reasons = Vec::new();
        if let Some(why) = self.shared.store.invalid() {
            reasons.push(format!("records file: {why}; serving the last good state"));
        }
        if let Some(damage) = self.shared.store.journal_damage() {
            reasons.push(format!("records journal: {damage}"));
        }
        for held in self.shared.store.held() {
            reasons.push(format!("records file: {held}"));
        }
        reasons.extend(self.shared.providers.load_failures());
        reasons.extend(self.shared.envs.logs().failing());
        reasons.extend(self.cluster().map(Cluster::health).unwrap_or_default());
        reasons.extend(self.config_health());
        let removals = self.shared.driver.shared.removals.health();
        reasons.extend(removals.reasons);
        let storage = self.shared.store.storage_fault().map(|f| {
            reasons.push(format!("storage: {f}"));
            StorageHealth {
                problem: f.problem,
                path: f.path.display().to_string(),
                error: f.error,
                since: f.since,
            }
        });
        HostHealth {
            status: if reasons.is_empty() {
                HealthStatus::Ok
            } else {
                HealthStatus::Degraded
            },
            reasons,
            storage,
            pending_removals: removals.pending,
        }
    }

    /// The live side of environment `id`, or `NotFound`.
    fn known_env(&self, id: &str) -> Result<Arc<Env>, LifecycleError> {
        (self.shared.envs.get(id)).ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    /// `Conflict` for a record held back as invalid: the API never acts on one (its
    /// text stays as written until someone fixes or removes it in the file).
    fn refuse_held(&self, id: &str) -> Result<(), LifecycleError> {
        let Some(reason) = self.shared.store.held_reason(id) else {
            return Ok(());
        };
        // The file by name: the caller is told which file, not where the host keeps it.
        let path = self.shared.store.path();
        let file = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        Err(LifecycleError::Conflict(format!(
            "the record with id {} in {file} is invalid and held back ({reason}); the host does not change it: fix or remove it in the file",
            untrusted::named(id),
        )))
    }

    /// The record of environment `id`, or `NotFound`.
    fn known_record(&self, id: &str) -> Result<Record, LifecycleError> {
        self.shared
            .store
            .get(id)
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    /// The record of environment `id` if `who` reaches it; someone else's answers
    /// `NotFound` exactly like one that does not exist, before anything else is
    /// looked at (a held-back record included).
    fn reachable(&self, who: &Principal, id: &str) -> Result<Record, LifecycleError> {
        match self.shared.store.get(id) {
            Some(record) if who.reaches(&record.owner, &record.id) => Ok(record),
            _ => Err(LifecycleError::NotFound(id.to_owned())),
        }
    }

    /// [`Self::reachable`] for a change: a record held back as invalid is refused
    /// (`Conflict`). One held back before it was ever valid has no owner yet, so
    /// only an admin hears that it is there; to everyone else it is `NotFound`.
    fn reachable_for_change(&self, who: &Principal, id: &str) -> Result<Record, LifecycleError> {
        let record = match self.reachable(who, id) {
            Err(LifecycleError::NotFound(_)) if who.is_admin() => {
                self.refuse_held(id)?;
                return Err(LifecycleError::NotFound(id.to_owned()));
            }
            other => other?,
        };
        self.refuse_held(id)?;
        Ok(record)
    }

    /// Every environment `who` reaches (owned by `owner` only, if given), with its
    /// live status.
    pub(crate) fn list(&self, who: &Principal, owner: Option<&str>) -> Vec<EnvironmentView> {
        self.views(|r| who.reaches(&r.owner, &r.id) && owner.is_none_or(|o| r.owner == o))
    }

    /// Every environment, whoever owns it: for the host's own aggregate figures
    /// (`/metrics`), never for a caller's answer.
    pub(crate) fn list_all(&self) -> Vec<EnvironmentView> {
        self.views(|_| true)
    }

    fn views(&self, keep: impl Fn(&Record) -> bool) -> Vec<EnvironmentView> {
        self.shared
            .store
            .list()
            .into_iter()
            .filter(|r| keep(r))
            .filter_map(|r| {
                let env = self.shared.envs.get(&r.id)?;
                Some(self.driver().view_of(&env, r))
            })
            .collect()
    }

    /// One environment, if `who` reaches it.
    pub(crate) fn get(&self, who: &Principal, id: &str) -> Result<EnvironmentView, LifecycleError> {
        let record = self.reachable(who, id)?;
        let env = self.known_env(id)?;
        Ok(self.driver().view_of(&env, record))
    }

    /// One environment, whoever owns it (for answers to a caller already admitted).
    fn view(&self, id: &str) -> Result<EnvironmentView, LifecycleError> {
        let record = self.known_record(id)?;
        let env = self.known_env(id)?;
        Ok(self.driver().view_of(&env, record))
    }

    /// `Invalid` unless every environment in `ids` exists and belongs to `user`
    /// (for a token limited to them).
    pub(crate) fn check_owned(&self, user: &str, ids: &[String]) -> Result<(), LifecycleError> {
        for id in ids {
            if self.shared.store.get(id).is_none_or(|r| r.owner != user) {
                return Err(LifecycleError::Invalid(format!(
                    "environments: {} is not an environment of user {}",
                    untrusted::named(id),
                    untrusted::named(user)
                )));
            }
        }
        Ok(())
    }

    /// Creates an environment (and starts it if asked).
    pub(crate) async fn create(
        &self,
        req: CreateRequest,
    ) -> Result<EnvironmentView, LifecycleError> {
        validate_name(&req.name)?;
        if provision::looks_derived(&req.name) {
            return Err(LifecycleError::Invalid(format!(
                "{}: a name of 1-32 characters, '-' and 24 lowercase hex digits is kept for environments provisioned from a template",
                untrusted::named(&req.name)
            )));
        }
        crate::tenancy::check_user(&req.owner)
            .map_err(|e| LifecycleError::Invalid(format!("owner: {e}")))?;
        validate::check_config(&req.config).map_err(LifecycleError::Invalid)?;
        validate::check_idle_stop(req.idle_stop_secs).map_err(LifecycleError::Invalid)?;
        // The name rule first: a request's provider may be up to a body's size, and
        // the refusal quotes it (cut, escaped), never the whole.
        crate::names::validate("provider", &req.provider)
            .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        // Before whether it is loaded: a user learns nothing of the providers they
        // may not use.
        if !req.by_admin {
            (self.shared.quotas).check_provider(&req.owner, &req.provider)?;
        }
        if !self.shared.providers.is_loaded(&req.provider) {
            return Err(LifecycleError::Invalid(format!(
                "no provider named {} is loaded",
                untrusted::named(&req.provider)
            )));
        }
        let mut record = Record::new(
            uuid::Uuid::new_v4().to_string(),
            req.name,
            req.provider,
            req.config,
        );
        record.restart_policy = req.restart_policy;
        record.idle_stop_secs = req.idle_stop_secs.filter(|&s| s > 0);
        record.owner = req.owner;
        if req.start {
            record.desired_state = DesiredState::Running;
        }
        let id = record.id.clone();
        // A delete of an environment of this name still removing its workspace.
        self.shared.deleting.done(&record.name).await;
        let admitted = self.admit(&record.owner, false).await?;
        (self.shared.quotas).check_new(&self.shared.store, &record.owner, req.start)?;
        self.insert_record(record).await?;
        self.admitted(admitted).await;
        let env = self.shared.envs.add(&id);
        tracing::info!(env = %id, "environment created");
        self.publish_created(&id);
        if req.start {
            self.driver().spawn_converge(env);
        }
        self.view(&id)
    }

    /// Applies a JSON merge patch to an environment's config (used from its next
    /// start) and sets its restart policy and idle timeout (0: never) if given.
    pub(crate) async fn patch(
        &self,
        who: &Principal,
        id: &str,
        config: Option<Map<String, Value>>,
        restart_policy: Option<RestartPolicy>,
        idle_stop_secs: Option<u64>,
    ) -> Result<EnvironmentView, LifecycleError> {
        validate::check_idle_stop(idle_stop_secs).map_err(LifecycleError::Invalid)?;
        let record = self.reachable_for_change(who, id)?;
        // A template's environment has the template's config, restart policy and idle
        // timeout: the operator's choice, which a user's connect cannot override and
        // neither may a user's patch.
        if record.provision_key.is_some() && !who.is_admin() {
            return Err(LifecycleError::Forbidden(format!(
                "environment {} was provisioned from template {}: its settings are the template's, and only an admin may change them",
                record.id,
                record.template().unwrap_or_default()
            )));
        }
        let mut merged = record.config;
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
                if let Some(secs) = idle_stop_secs {
                    r.idle_stop_secs = Some(secs).filter(|&s| s > 0);
                }
            })
            .await?;
        self.publish_changed(id, None);
        self.view(id)
    }

    /// `ProviderNotAllowed` when a user (not an admin) asks `record` to run and its
    /// provider is outside the owner's `[tenancy] providers` (the list changed since
    /// it was made, or an admin made it for them). A template's environment runs on
    /// the operator's choice of provider and is not checked, while that template
    /// still stands on that provider.
    pub(super) fn check_users_start(
        &self,
        who: &Principal,
        record: &Record,
    ) -> Result<(), LifecycleError> {
        if who.is_admin() || self.template_vouches(record) {
            return Ok(());
        }
        (self.shared.quotas).check_provider(&record.owner, &record.provider)
    }

    /// Sets the desired state and lets the environment converge on it.
    pub(crate) async fn set_desired(
        &self,
        who: &Principal,
        id: &str,
        desired: DesiredState,
    ) -> Result<EnvironmentView, LifecycleError> {
        let record = self.reachable_for_change(who, id)?;
        if desired == DesiredState::Running {
            self.check_users_start(who, &record)?;
        }
        let env = self.known_env(id)?;
        let admitted = match desired {
            DesiredState::Running => self.admit(&record.owner, false).await?,
            // A stop is not counted against a limit, so no other host need know of
            // it first; it only waits for a start's check here to end, so that check
            // counted what is in force.
            DesiredState::Stopped => {
                (self.shared.quotas.admit(&record.owner, false).await).map(Admitted::here)
            }
        };
        let mut leased = false;
        if desired == DesiredState::Running {
            (self.shared.quotas).check_running(&self.shared.store, &record.owner, Some(id))?;
            leased = self.lease_ahead(id).await;
        }
        let written = self.shared.store.update(id, |r| {
            if desired == DesiredState::Stopped {
                r.stop_reason = Some(StopReason::User);
            }
            r.desired_state = desired;
        });
        // The first poll puts the change in force in memory: the environment heads
        // for it while the change is made durable (a start's instantiation overlaps
        // the sync). The answer still waits for the sync; a crash before it loses
        // nothing acknowledged, and what was started dies with the host.
        let mut written = std::pin::pin!(written);
        let first = crate::store::in_force(written.as_mut(), || {
            self.shared.store.peek(id, |r| r.desired_state) == Some(desired)
        })
        .await;
        let syncing = first.is_pending();
        if syncing {
            self.driver().spawn_converge(env.clone());
        }
        let done = match first {
            std::task::Poll::Ready(done) => done,
            std::task::Poll::Pending => written.await,
        };
        if done.is_err() {
            self.lease_ahead_undone(id, leased).await;
        }
        done?;
        self.admitted(admitted).await;
        self.publish_changed(id, None);
        if !syncing {
            self.driver().spawn_converge(env);
        }
        let mut view = self.view(id)?;
        view.status = view.status.heading_to(desired);
        Ok(view)
    }

    /// Stops (if running) and starts again, with a fresh runtime token.
    pub(crate) async fn restart(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<EnvironmentView, LifecycleError> {
        let record = self.reachable_for_change(who, id)?;
        self.check_users_start(who, &record)?;
        let env = self.known_env(id)?;
        let admitted = self.admit(&record.owner, false).await?;
        (self.shared.quotas).check_running(&self.shared.store, &record.owner, Some(id))?;
        self.want_running(id).await?;
        self.admitted(admitted).await;
        self.publish_changed(id, None);
        self.driver().spawn_restart(env);
        self.view(id)
    }

    /// The last `tail` lines of environment `id`'s log at or after `since` (a line's
    /// `ts` form), and, if `follow`, the lines written from now on with what fires when
    /// the environment moves to another owner (the follow ends then, as its apps are
    /// closed: it was admitted as the old owner's); `NotFound` for an environment `who`
    /// does not reach.
    pub(crate) async fn env_logs(
        &self,
        who: &Principal,
        id: &str,
        tail: usize,
        since: Option<String>,
        follow: bool,
    ) -> Result<(Vec<String>, Option<(Follow, CancellationToken)>), LifecycleError> {
        // Taken before the owner is checked, so a move in between still ends it.
        let moves = self.shared.envs.get(id).map(|env| env.owner_moves());
        self.reachable(who, id)?;
        let moves = moves.ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        let logs = self.shared.envs.logs().clone();
        // Subscribed before the tail is read, so no line falls between the two.
        let follow = follow.then(|| (logs.follow(id), moves));
        // Reading and splitting up to two rotated files is blocking work: off the
        // threads that serve the API and the relay.
        let id = id.to_owned();
        let lines = tokio::task::spawn_blocking(move || logs.tail(&id, tail, since.as_deref()))
            .await
            .map_err(|e| LifecycleError::Internal(format!("reading the log failed: {e}")))?;
        Ok((lines, follow))
    }

    /// What environment `id`'s provider is handed beyond its record's config, to take
    /// out of the text it shows (`crate::redact`); nothing for an unknown id.
    pub(crate) fn handed_values(&self, id: &str) -> crate::redact::ConfigValues {
        let config = self.shared.config.get();
        let handed =
            |r: &Record| crate::redact::ConfigValues::handed(&config, &r.provider, r.template());
        self.shared.store.peek(id, handed).unwrap_or_default()
    }

    /// The data directory (absolute, canonical).
    pub(crate) fn data_dir(&self) -> std::path::PathBuf {
        self.shared.config.get().data_dir.clone()
    }

    /// Resolves when the host starts shutting down: a response the API holds open (a
    /// followed log) ends then, or the server would wait on it forever.
    pub(crate) fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.closing.clone().cancelled_owned()
    }

    /// Lines of environments' logs dropped since start because their writer was behind.
    pub(crate) fn log_lines_dropped(&self) -> u64 {
        self.shared.envs.logs().dropped()
    }

    /// Stops an environment, lets its provider remove the resource, and forgets it.
    /// Works from any state: an operation in flight is abandoned.
    /// A record held back as invalid is refused (409): the host never acts on it.
    pub(crate) async fn delete(&self, who: &Principal, id: &str) -> Result<(), LifecycleError> {
        self.reachable_for_change(who, id)?;
        let env = self.known_env(id)?;
        env.deleting.cancel();
        let _op = env.op.lock().await;
        let config = self.shared.config.get();
        let name = self.shared.store.peek(id, |r| r.name.clone());
        // Until the workspace is gone, a new environment of this name waits.
        let _deleting = name.as_deref().map(|n| self.shared.deleting.hold(n));
        if let Some(name) = &name {
            workspaces::mark(&config, name);
        }
        // Another host running it removes its resource when the delete reaches it,
        // and so may the host that ran it last (`leave_removal`).
        let removal = self.leave_removal(id).await;
        let record = match self.shared.store.remove(id).await {
            Ok(record) => record,
            Err(e) => {
                if let Some(name) = self.shared.store.peek(id, |r| r.name.clone()) {
                    workspaces::unmark(&config, &name);
                }
                if removal.noted {
                    self.removal_done(id).await;
                }
                return Err(e.into());
            }
        };
        self.release_record_name(&record).await;
        let here = !self.runs_elsewhere(id);
        if here {
            if removal.here {
                self.driver().destroy_locked(&env, &record).await;
                if removal.noted {
                    self.removal_done(id).await;
                }
            }
            self.driver().release(&env).await;
        }
        self.shared.envs.forget(id);
        self.events().deleted(&record);
        self.shared.envs.close_hub(id, "environment deleted");
        if here {
            self.driver().remove_workspace(&env, &record).await;
        }
        workspaces::unmark(&config, &record.name);
        tracing::info!(env = %id, "environment deleted");
        Ok(())
    }

    /// Stops every instance without changing desired states (host shutdown), then
    /// waits for background work to finish.
    pub(crate) async fn shutdown(&self) {
        self.shared.closing.cancel();
        for env in self.shared.envs.all() {
            self.driver().shut_down(&env).await;
        }
        self.driver().drain().await;
        // Other hosts may take this host's environments at once.
        if let Some(cluster) = self.cluster() {
            cluster.shutdown().await;
        }
        // The file people read is current once the host is down.
        if let Err(e) = self.shared.store.flush().await {
            tracing::error!(error = %e, "compacting the records journal at shutdown failed; it is replayed at the next start");
        }
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
