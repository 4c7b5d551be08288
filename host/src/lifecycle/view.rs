//! How an environment is shown: the persisted record joined with its live state.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::idle::Idleness;
use super::progress::{StartPhase, StartProgress};
use super::provider_status::ProviderStatus;
use crate::engine::ProviderHandle;
use crate::host_paths::HiddenDataDir;
use crate::store::{DesiredState, ProvisionKey, Record, RestartPolicy, StopReason};
use crate::tenancy::Principal;

/// Live status of an environment (`docs/rest.md` says what leads to each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Never started by this host.
    #[default]
    Created,
    /// The provider is starting it.
    Starting,
    /// The provider started it.
    Running,
    /// The provider is stopping it.
    Stopping,
    /// Stopped.
    Stopped,
    /// Being stopped and started again.
    Restarting,
    /// The last operation failed; see `lastError`.
    Error,
}

impl Status {
    /// The status an accepted request to reach `desired` leads to first: a reply to
    /// `start` or `stop` shows where the environment is going, not where it was.
    pub(crate) fn heading_to(self, desired: DesiredState) -> Status {
        match (desired, self) {
            (DesiredState::Stopped, Status::Running | Status::Starting | Status::Restarting) => {
                Status::Stopping
            }
            (DesiredState::Running, Status::Created | Status::Stopped | Status::Error) => {
                Status::Starting
            }
            (_, status) => status,
        }
    }
}

/// The runtime's side of an environment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct RuntimeView {
    /// Whether its runtime is connected now.
    pub connected: bool,
}

/// An environment as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnvironmentView {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// The user it belongs to.
    pub owner: String,
    /// Environment config, handed to the provider at start.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// What it should be.
    pub desired_state: DesiredState,
    /// What it is.
    pub status: Status,
    /// Its runtime connection.
    pub runtime: RuntimeView,
    /// Where the current start is (`instantiating`, `provider-start`,
    /// `waiting-for-runtime`, `running`), or where the last start failed when
    /// `status` is `error`; `null` when stopped or never started by this host.
    #[schema(required = true)]
    pub start_phase: Option<StartPhase>,
    /// When the start entered `startPhase` (RFC 3339).
    #[schema(required = true)]
    pub start_phase_since: Option<String>,
    /// When the current (or failed) start began (RFC 3339).
    #[schema(required = true)]
    pub started_at: Option<String>,
    /// The provider's resource, handed back to it after a host restart; admins only
    /// (`null` to others).
    #[schema(required = true)]
    pub resource_id: Option<String>,
    /// Where the runtime works, as the provider reported at start; admins only
    /// (`null` to others).
    #[schema(required = true)]
    pub workspace_path: Option<String>,
    /// Last failure, until the next successful start; anyone but an admin reads the
    /// data directory's path in it as `<data-dir>`, and everyone a value of the
    /// operator's config (or a template's secret) it quotes as `<config:KEY>`.
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// Restarts after failures so far.
    pub restarts: u32,
    /// What happens when it fails.
    pub restart_policy: RestartPolicy,
    /// When the latest restarts happened (RFC 3339), oldest first.
    pub restart_history: Vec<String>,
    /// Seconds without an app or a relayed frame before the host stops it; `null`
    /// means never.
    #[schema(required = true)]
    pub idle_stop_secs: Option<u64>,
    /// Last app arrival or departure or relayed frame since the host started (RFC 3339).
    #[schema(required = true)]
    pub last_activity_at: Option<String>,
    /// When the host will stop it for idleness if nothing happens first (RFC 3339); `null` when
    /// it has no idle timeout, is not running, or an app or busy runtime holds it.
    #[schema(required = true)]
    pub stops_at: Option<String>,
    /// Why it was last stopped (`user`, `idle`); cleared by the next start.
    #[schema(required = true)]
    pub stop_reason: Option<StopReason>,
    /// Facts the provider reported at start (a value of the operator's config quoted
    /// in one reads `<config:KEY>`).
    pub metadata: BTreeMap<String, String>,
    /// Version of the provider instance serving it, while one does.
    #[schema(required = true)]
    pub provider_version: Option<String>,
    /// SHA-256 of the component that instance runs, while one does.
    #[schema(required = true)]
    pub provider_sha256: Option<String>,
    /// The provider a start would use now, compared with the running instance.
    pub provider_status: ProviderStatus,
    /// What it was provisioned for, if an app's connect made it from a template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provision_key: Option<ProvisionKey>,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change of the record (RFC 3339).
    pub updated_at: String,
    /// Cluster mode only: the id of the host running it (holding its lease); absent
    /// when no host runs it, and always absent on a host running alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The data directory, taken out of `lastError` for anyone but an admin.
    #[serde(skip)]
    pub data_dir: Option<HiddenDataDir>,
}

impl EnvironmentView {
    pub(crate) fn new(
        record: Record,
        status: Status,
        connected: bool,
        metadata: BTreeMap<String, String>,
        running: Option<&ProviderHandle>,
        provider_status: ProviderStatus,
        idleness: Idleness,
    ) -> Self {
        Self {
            id: record.id,
            name: record.name,
            provider: record.provider,
            owner: record.owner,
            config: record.config,
            desired_state: record.desired_state,
            status,
            runtime: RuntimeView { connected },
            start_phase: None,
            start_phase_since: None,
            started_at: None,
            resource_id: record.resource_id,
            workspace_path: record.workspace_path,
            last_error: record.last_error,
            restarts: record.restarts,
            restart_policy: record.restart_policy,
            restart_history: record.restart_history,
            idle_stop_secs: record.idle_stop_secs.filter(|&s| s > 0),
            last_activity_at: idleness.last_activity_at,
            stops_at: idleness.stops_at,
            stop_reason: record.stop_reason,
            metadata,
            provider_version: running.map(|p| p.version.clone()),
            provider_sha256: running.map(|p| p.sha256.clone()),
            provider_status,
            provision_key: record.provision_key,
            created_at: record.created_at,
            updated_at: record.updated_at,
            host: None,
            data_dir: None,
        }
    }

    /// With the progress of its current or failed start.
    pub(crate) fn with_start(mut self, start: Option<StartProgress>) -> Self {
        if let Some(start) = start {
            self.start_phase = Some(start.phase);
            self.start_phase_since = Some(start.phase_since);
            self.started_at = Some(start.started_at);
        }
        self
    }

    /// As `who` is shown it. Where the host keeps things is the operator's business:
    /// `workspacePath`, `resourceId` (for `local-process` and `git-worktree` the same
    /// host path) and a drop-in provider's `path` go to admins only (`null`, or absent
    /// for the path, to anyone else), and `lastError` names the data directory
    /// `<data-dir>` to anyone else.
    pub(crate) fn seen_by(self, who: &Principal) -> Self {
        if who.is_admin() {
            self
        } else {
            self.without_host_paths()
        }
    }

    /// As anyone but an admin is shown it (see [`EnvironmentView::seen_by`]).
    pub(crate) fn without_host_paths(mut self) -> Self {
        self.workspace_path = None;
        self.resource_id = None;
        self.last_error = self.shown_error();
        if let Some(loaded) = &mut self.provider_status.loaded {
            loaded.source.path = None;
        }
        self
    }

    /// `lastError` as anyone but an admin reads it.
    fn shown_error(&self) -> Option<String> {
        let error = self.last_error.as_deref()?;
        Some(match &self.data_dir {
            Some(hidden) => hidden.hide(error),
            None => error.to_owned(),
        })
    }

    /// The `environmentStatus` event sent to apps (any of the environment's users:
    /// `lastError` as anyone but an admin reads it).
    pub(crate) fn status_event(&self) -> String {
        json!({
            "type": "environmentStatus",
            "environmentId": self.id,
            "status": self.status,
            "desiredState": self.desired_state,
            "runtime": {"connected": self.runtime.connected},
            "startPhase": self.start_phase,
            "startPhaseSince": self.start_phase_since,
            "startedAt": self.started_at,
            "lastError": self.shown_error(),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_shows_where_a_start_or_stop_is_heading() {
        use DesiredState::{Running, Stopped};
        assert_eq!(Status::Running.heading_to(Stopped), Status::Stopping);
        assert_eq!(Status::Starting.heading_to(Stopped), Status::Stopping);
        assert_eq!(Status::Stopped.heading_to(Stopped), Status::Stopped);
        assert_eq!(Status::Stopped.heading_to(Running), Status::Starting);
        assert_eq!(Status::Error.heading_to(Running), Status::Starting);
        assert_eq!(Status::Running.heading_to(Running), Status::Running);
        assert_eq!(Status::Stopping.heading_to(Running), Status::Stopping);
    }
}
