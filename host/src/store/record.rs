//! One environment as persisted in `environments.json`, and the enums it uses. Fields
//! the host does not know are kept in [`Record::extra`] and written back as they were.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::now;

/// Whether an environment should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// It should be running.
    Running,
    /// It should be stopped.
    #[default]
    Stopped,
}

/// What to do when a running environment fails (a health check, its runtime gone):
/// `never` leaves it in `error`; `on-failure` (the default) restarts it with backoff
/// up to the retry cap; `always` restarts it without a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it in `error`.
    Never,
    /// Restart it with backoff, up to the retry cap, then leave it in `error`.
    #[default]
    OnFailure,
    /// Restart it with backoff, without a cap.
    Always,
}

/// What a provisioned environment was made per (`docs/protocol.md`, "Provisioning"):
/// with the record's owner, the key an app's connect is matched on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvisionKey {
    /// The template it was made from.
    pub template: String,
    /// `user`, `thread` or `workspace`.
    pub scope: String,
    /// The thread or workspace id (empty for `user`).
    #[serde(default)]
    pub key: String,
}

/// Why an environment whose desired state is `stopped` was stopped: `user` (a caller
/// asked) or `idle` (no app or relayed frame for its `idleStopSecs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// A caller asked (`POST .../stop`).
    User,
    /// The host stopped it after `idleStopSecs` without an app or a relayed frame.
    Idle,
}

/// One environment as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Stable id.
    pub id: String,
    /// Unique human name; also names the workspace directory.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// The user it belongs to; records written before there were owners belong to
    /// `admin`. May be changed by hand to move an environment between users.
    #[serde(default = "default_owner")]
    pub owner: String,
    /// Environment config handed to the provider.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// What the operator wants.
    #[serde(default)]
    pub desired_state: DesiredState,
    /// The provider's resource, for reconnecting after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Where the runtime works, as reported by the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_path: Option<String>,
    /// Small key/values the provider persisted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provider_state: BTreeMap<String, String>,
    /// Generation of the current runtime token (one per start).
    #[serde(default)]
    pub runtime_generation: u64,
    /// SHA-256 of the current runtime token, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_token_sha256: Option<String>,
    /// Last failure, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// What to do when it fails while it should be running.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Seconds without an app connection or a relayed frame after which the host
    /// stops it; absent (or 0) means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop_secs: Option<u64>,
    /// Why it was last stopped; cleared by the next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// When the most recent restarts happened (RFC 3339, oldest first, bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_history: Vec<String>,
    /// Cluster mode: the host that started it last, which removes its resource when
    /// it is deleted while stopped (the resource may live on that host's disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_host: Option<String>,
    /// What it was provisioned for, if an app's connect made it from a template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_key: Option<ProvisionKey>,
    /// RFC 3339 creation time (empty in a hand-written record).
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339 time of the last change.
    #[serde(default)]
    pub updated_at: String,
    /// Fields this host does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Record {
    /// A new, never-started record stamped now.
    pub fn new(id: String, name: String, provider: String, config: Map<String, Value>) -> Self {
        let now = now();
        Self {
            id,
            name,
            provider,
            owner: default_owner(),
            config,
            desired_state: DesiredState::Stopped,
            resource_id: None,
            workspace_path: None,
            provider_state: BTreeMap::new(),
            runtime_generation: 0,
            runtime_token_sha256: None,
            last_error: None,
            restarts: 0,
            restart_policy: RestartPolicy::default(),
            idle_stop_secs: None,
            stop_reason: None,
            restart_history: Vec::new(),
            last_host: None,
            provision_key: None,
            created_at: now.clone(),
            updated_at: now,
            extra: Map::new(),
        }
    }
}

impl Record {
    /// The template it was provisioned from, if any.
    pub fn template(&self) -> Option<&str> {
        self.provision_key.as_ref().map(|k| k.template.as_str())
    }
}

/// The owner of a record that names none: the operator.
fn default_owner() -> String {
    "admin".to_owned()
}
