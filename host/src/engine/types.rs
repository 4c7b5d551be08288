//! Host-side types of the provider world, and the conversions to and from the
//! generated bindings. Everything above the engine sees only these.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::bindings::types as wit;
use crate::config::{CommandPattern, UrlPattern};

/// What a provider says about itself.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderDescription {
    /// Unique provider name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// One paragraph about it.
    pub description: String,
    /// Commands it asks to spawn.
    #[schema(value_type = Vec<CommandPattern>)]
    pub commands: Arc<[CommandPattern]>,
    /// URLs it asks to reach (`scheme://host:port` patterns).
    #[schema(value_type = Vec<String>)]
    pub urls: Arc<[UrlPattern]>,
    /// Directories it asks for.
    pub directories: Vec<String>,
    /// JSON Schema of its config (`null` if it gave none or an invalid one).
    #[schema(value_type = Object, nullable)]
    pub config_schema: Value,
    /// App message types it handles itself.
    pub message_types: Vec<String>,
}

impl ProviderDescription {
    /// What it asks for, as the broker sees it.
    pub fn request(&self) -> crate::broker::Request {
        crate::broker::Request {
            commands: self.commands.clone(),
            urls: self.urls.clone(),
            directories: self.directories.clone(),
        }
    }

    /// Checks `info()` against the limits below (the name against [`crate::names`]);
    /// a provider over any of them is refused at load with the reason.
    pub(crate) fn from_wit(info: wit::ProviderInfo) -> Result<Self, String> {
        crate::names::validate("provider", &info.name).map_err(|e| e.to_string())?;
        let caps = &info.capabilities;
        let args = caps.commands.iter().flat_map(|c| &c.args);
        let programs = caps.commands.iter().map(|c| &c.program);
        let checks: [(&str, usize, usize); 12] = [
            ("version", info.version.len(), MAX_INFO_VERSION),
            ("description", info.description.len(), MAX_INFO_DESCRIPTION),
            ("config schema", info.config_schema.len(), MAX_INFO_SCHEMA),
            ("message types", info.message_types.len(), MAX_INFO_LIST),
            (
                "a message type",
                longest(&info.message_types),
                MAX_INFO_ITEM,
            ),
            ("commands", caps.commands.len(), MAX_INFO_LIST),
            ("arguments of a command", most_args(caps), MAX_INFO_LIST),
            (
                "a program or argument",
                longest(programs.chain(args)),
                MAX_INFO_ITEM,
            ),
            ("urls", caps.urls.len(), MAX_INFO_LIST),
            ("a url", longest(&caps.urls), MAX_INFO_ITEM),
            ("directories", caps.directories.len(), MAX_INFO_LIST),
            ("a directory", longest(&caps.directories), MAX_INFO_ITEM),
        ];
        if let Some((what, got, max)) = checks.into_iter().find(|(_, got, max)| got > max) {
            return Err(format!(
                "{what} of provider {} is {got} long; the limit is {max} (bytes or entries)",
                info.name
            ));
        }
        // The version is shown wherever the provider is (log lines at every load and
        // start, the CLI's `provider install` line, the dashboard), and not every one
        // of them escapes it: refused here, where it enters, no escape can reach a
        // terminal.
        if info.version.chars().any(char::is_control) {
            return Err(format!(
                "version of provider {} has control characters",
                info.name
            ));
        }
        let commands = info
            .capabilities
            .commands
            .into_iter()
            .map(|c| CommandPattern::new(c.program, c.args).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name: info.name,
            version: info.version,
            description: info.description,
            commands: commands.into(),
            urls: (info.capabilities.urls.iter())
                .map(|u| UrlPattern::parse(u).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?
                .into(),
            directories: info.capabilities.directories,
            config_schema: serde_json::from_str(&info.config_schema).unwrap_or(Value::Null),
            message_types: info.message_types,
        })
    }
}

/// Longest `info().version`, in bytes.
pub const MAX_INFO_VERSION: usize = 64;
/// Longest `info().description`, in bytes.
pub const MAX_INFO_DESCRIPTION: usize = 4096;
/// Longest `info().config-schema`, in bytes.
pub const MAX_INFO_SCHEMA: usize = 64 << 10;
/// Most entries in each `info()` list (message types, commands, arguments of one
/// command, urls, directories).
pub const MAX_INFO_LIST: usize = 64;
/// Longest entry of an `info()` list, in bytes.
pub const MAX_INFO_ITEM: usize = 1024;

fn longest<'a>(items: impl IntoIterator<Item = &'a String>) -> usize {
    items.into_iter().map(String::len).max().unwrap_or(0)
}

fn most_args(caps: &wit::Capabilities) -> usize {
    caps.commands
        .iter()
        .map(|c| c.args.len())
        .max()
        .unwrap_or(0)
}

/// What a start hands the provider.
#[derive(Debug, Clone)]
pub struct InitVars {
    /// Environment id.
    pub environment_id: String,
    /// Environment name.
    pub environment_name: String,
    /// Merged config, a JSON object.
    pub config: serde_json::Map<String, Value>,
    /// Persisted resource id, if any.
    pub resource_id: Option<String>,
    /// Where the runtime connects back.
    pub runtime_url: String,
    /// The runtime token of this start.
    pub runtime_token: String,
    /// Project path, if the config names one.
    pub project_path: Option<String>,
    /// Workspace as a host path.
    pub workspace_host_path: String,
}

/// The guest path at which the workspace is preopened.
pub const WORKSPACE_GUEST_DIR: &str = "/workspace";
/// The guest path at which the provider's own state directory is preopened.
pub const STATE_GUEST_DIR: &str = "/state";

impl From<InitVars> for wit::InitVars {
    fn from(v: InitVars) -> Self {
        Self {
            environment_id: v.environment_id,
            environment_name: v.environment_name,
            config: Value::Object(v.config).to_string(),
            resource_id: v.resource_id,
            runtime_url: v.runtime_url,
            runtime_token: v.runtime_token,
            project_path: v.project_path,
            workspace_dir: WORKSPACE_GUEST_DIR.to_owned(),
            workspace_host_path: v.workspace_host_path,
        }
    }
}

/// What a successful start reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartOutcome {
    /// The resource, for reconnecting later.
    pub resource_id: String,
    /// Where the runtime works.
    pub workspace_path: String,
    /// Free-form facts.
    pub metadata: BTreeMap<String, String>,
}

/// Longest `resource-id` a provider may return or set, in bytes.
pub const MAX_RESOURCE_ID: usize = 256;
/// Longest `workspace-path` a provider may return, in bytes.
pub const MAX_WORKSPACE_PATH: usize = 4096;
/// Most `metadata` entries a start may return.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Most bytes of `metadata` (keys and values together) a start may return.
pub const MAX_METADATA_BYTES: usize = 16 << 10;

impl StartOutcome {
    /// Why this outcome is over the host's limits, if it is: the start then fails
    /// with that reason instead of storing or serving what the provider sent.
    pub fn over_limits(&self) -> Option<String> {
        let metadata_bytes: usize = (self.metadata.iter()).map(|(k, v)| k.len() + v.len()).sum();
        let checks = [
            (
                "resourceId",
                self.resource_id.len(),
                MAX_RESOURCE_ID,
                "bytes",
            ),
            (
                "workspacePath",
                self.workspace_path.len(),
                MAX_WORKSPACE_PATH,
                "bytes",
            ),
            (
                "metadata",
                self.metadata.len(),
                MAX_METADATA_ENTRIES,
                "entries",
            ),
            ("metadata", metadata_bytes, MAX_METADATA_BYTES, "bytes"),
        ];
        (checks.into_iter())
            .find(|(_, got, max, _)| got > max)
            .map(|(what, got, max, unit)| {
                format!("the provider's start result is over the host's limits: {what} has {got} {unit}, at most {max} are accepted")
            })
    }
}

impl From<wit::StartResult> for StartOutcome {
    fn from(r: wit::StartResult) -> Self {
        Self {
            resource_id: r.resource_id,
            workspace_path: r.workspace_path,
            metadata: r.metadata.into_iter().map(|e| (e.key, e.value)).collect(),
        }
    }
}

/// The kind of a provider's own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Bad input.
    InvalidInput,
    /// Not there.
    NotFound,
    /// Refused.
    Denied,
    /// Not implemented by this provider.
    Unsupported,
    /// Anything else.
    Failed,
}

/// An error the provider returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderFailure {
    /// Its kind.
    pub kind: FailureKind,
    /// Its message.
    pub message: String,
}

impl From<wit::ProviderError> for ProviderFailure {
    fn from(e: wit::ProviderError) -> Self {
        let (kind, message) = match e {
            wit::ProviderError::InvalidInput(m) => (FailureKind::InvalidInput, m),
            wit::ProviderError::NotFound(m) => (FailureKind::NotFound, m),
            wit::ProviderError::Denied(m) => (FailureKind::Denied, m),
            wit::ProviderError::Unsupported(m) => (FailureKind::Unsupported, m),
            wit::ProviderError::Failed(m) => (FailureKind::Failed, m),
        };
        // A provider's message ends up in `lastError`, API answers and logs, with
        // WASI error numbers in words.
        let message = super::errno::explain(&message);
        let message = crate::untrusted::cut(&message, crate::untrusted::MAX_ERROR);
        Self { kind, message }
    }
}

/// Holds what a call returned to the host's limits: a start result over them
/// becomes the provider's failure, a health detail is cut.
pub(crate) fn bounded(reply: Result<Reply, ProviderFailure>) -> Result<Reply, ProviderFailure> {
    match reply {
        Ok(Reply::Started(outcome)) => match outcome.over_limits() {
            Some(message) => Err(ProviderFailure {
                kind: FailureKind::InvalidInput,
                message,
            }),
            None => Ok(Reply::Started(outcome)),
        },
        Ok(Reply::Health(mut h)) => {
            if let Some(detail) = &mut h.detail {
                crate::untrusted::cut_in_place(detail, crate::untrusted::MAX_ERROR);
            }
            Ok(Reply::Health(h))
        }
        other => other,
    }
}

/// Why a call into a provider did not return a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The provider returned an error.
    #[error(transparent)]
    Provider(#[from] ProviderFailure),
    /// The instance trapped (a panic, a limit, a host-call misuse); it is now dead.
    #[error("provider trapped: {0}")]
    Trapped(String),
    /// The call ran past its deadline; the instance is now dead.
    #[error(
        "provider call timed out after {0:?} (deadlines are set in [lifecycle] of tether.toml)"
    )]
    TimedOut(Duration),
    /// The instance is gone (stopped, or dead after an earlier failure).
    #[error("provider instance is not available: {0}")]
    Closed(String),
}

/// Health as a provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// All good.
    Healthy,
    /// Working, with trouble.
    Degraded,
    /// Not working.
    Unhealthy,
}

/// A health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The verdict.
    pub state: HealthState,
    /// Why, for a person.
    pub detail: Option<String>,
}

impl From<wit::Health> for HealthReport {
    fn from(h: wit::Health) -> Self {
        let state = match h.state {
            wit::HealthState::Healthy => HealthState::Healthy,
            wit::HealthState::Degraded => HealthState::Degraded,
            wit::HealthState::Unhealthy => HealthState::Unhealthy,
        };
        Self {
            state,
            detail: h.detail,
        }
    }
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffFile {
    /// Workspace-relative path.
    pub path: String,
    /// `added`, `modified`, `deleted` or `renamed`.
    pub change: &'static str,
    /// Unified diff.
    pub diff: String,
}

impl From<wit::DiffFile> for DiffFile {
    fn from(d: wit::DiffFile) -> Self {
        let change = match d.change {
            wit::ChangeKind::Added => "added",
            wit::ChangeKind::Modified => "modified",
            wit::ChangeKind::Deleted => "deleted",
            wit::ChangeKind::Renamed => "renamed",
        };
        Self {
            path: d.path,
            change,
            diff: d.diff,
        }
    }
}

/// A call into a provider instance.
#[derive(Debug, Clone)]
pub enum Call {
    /// `on-provider-start`.
    Start(Box<InitVars>),
    /// `on-provider-agent-start` with a JSON message.
    AgentStart(String),
    /// `on-provider-stop`.
    Stop,
    /// `on-close-signal`: the host is closing; release, keep the resource.
    Close,
    /// `on-provider-destroy`: the environment is deleted; remove its resource. The
    /// init vars name it (their runtime fields are empty). A 0.1.0 provider gets
    /// `on-close-signal(destroy: true)` instead.
    Destroy(Box<InitVars>),
    /// `on-raw-message` with a JSON message.
    Raw(String),
    /// `check-health`.
    Health,
    /// `read-file`.
    ReadFile(String),
    /// `write-file`.
    WriteFile(String, String),
    /// `delete-file`.
    DeleteFile(String),
    /// `create-folder`.
    CreateFolder(String),
    /// `rename-item`.
    RenameItem(String, String),
    /// `get-diff-files`.
    DiffFiles,
    /// `merge-as-patch`.
    MergePatch,
}

/// What a call returned.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Nothing beyond success.
    Unit,
    /// Text: file content, a patch, a raw reply.
    Text(String),
    /// A start.
    Started(StartOutcome),
    /// A health report.
    Health(HealthReport),
    /// Changed files.
    Diff(Vec<DiffFile>),
}

/// The environment's runtime connection, as a provider instance may use it.
pub trait RuntimePort: Send + Sync {
    /// Sends (or queues) one JSON text message to the runtime.
    fn send(&self, message: String) -> Result<(), String>;
    /// Whether the runtime is connected now.
    fn is_connected(&self) -> bool;
    /// The largest message the relay carries, in bytes.
    fn max_message_bytes(&self) -> usize;
}

/// A runtime port with nobody behind it, for instances that serve no environment.
#[derive(Debug, Default)]
pub struct NoRuntime;

impl RuntimePort for NoRuntime {
    fn send(&self, _message: String) -> Result<(), String> {
        Err("this instance serves no environment".into())
    }
    fn is_connected(&self) -> bool {
        false
    }
    fn max_message_bytes(&self) -> usize {
        usize::MAX
    }
}
