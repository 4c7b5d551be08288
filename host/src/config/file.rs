//! The shape of `tether.toml` as read from disk: every key optional, unknown keys
//! refused. [`super::ServeConfig::load`] validates it and lays it over the defaults.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) lifecycle: FileLifecycle,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) health: FileHealth,
    #[serde(default)]
    pub(super) restart: FileRestart,
    #[serde(default)]
    pub(super) providers: BTreeMap<String, FileGrant>,
    #[serde(default)]
    pub(super) relay: FileRelay,
    #[serde(default)]
    pub(super) net: FileNet,
    #[serde(default)]
    pub(super) cache: FileCache,
    #[serde(default)]
    pub(super) audit: FileAudit,
    #[serde(default)]
    pub(super) auth: FileAuth,
    #[serde(default)]
    pub(super) tenancy: super::tenancy::FileTenancy,
    #[serde(default)]
    pub(super) templates: BTreeMap<String, super::templates::FileTemplate>,
    #[serde(default)]
    pub(super) server: super::serving::FileServer,
    #[serde(default)]
    pub(super) cluster: super::cluster::FileCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAudit {
    pub(super) max_file_mib: Option<u64>,
    pub(super) keep_files: Option<usize>,
    pub(super) sampled_per_second: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    pub(super) max_failures_per_minute: Option<u32>,
    pub(super) max_tracked_addresses: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCache {
    pub(super) enabled: Option<bool>,
    pub(super) dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRelay {
    pub(super) window_messages: Option<usize>,
    pub(super) window_kib: Option<usize>,
    pub(super) max_message_kib: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) ping_interval_secs: Option<u64>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) session_ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHealth {
    pub(super) interval_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) failure_threshold: Option<u32>,
    pub(super) runtime_grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRestart {
    pub(super) initial_backoff_ms: Option<u64>,
    pub(super) max_backoff_ms: Option<u64>,
    pub(super) max_retries: Option<u32>,
    pub(super) stable_after_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileNet {
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) first_byte_timeout_ms: Option<u64>,
    pub(super) max_connections: Option<usize>,
    #[serde(default)]
    pub(super) hosts: BTreeMap<String, IpAddr>,
    #[serde(default)]
    pub(super) extra_ca_files: Vec<PathBuf>,
    pub(super) use_builtin_roots: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLifecycle {
    pub(super) start_timeout_secs: Option<u64>,
    pub(super) stop_timeout_secs: Option<u64>,
    pub(super) call_timeout_secs: Option<u64>,
    pub(super) removal_retry_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) memory_mib: Option<usize>,
    pub(super) workspace_mib: Option<u64>,
    pub(super) state_mib: Option<u64>,
    pub(super) max_open_files: Option<usize>,
    pub(super) host_open_files: Option<usize>,
    pub(super) max_processes: Option<usize>,
    pub(super) max_resources: Option<usize>,
    pub(super) guest_threads: Option<usize>,
    pub(super) share_memory_images: Option<bool>,
    pub(super) compile_mib: Option<u64>,
    pub(super) compile_secs: Option<u64>,
}

/// `[providers.NAME]`: a grant (any of the first five keys replaces the built-in
/// default grant as a whole), operator config, and consent for a drop-in to replace
/// the built-in of that name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileGrant {
    pub(super) commands: Option<Vec<FileCommand>>,
    pub(super) env: Option<Vec<String>>,
    pub(super) set_env: Option<Vec<String>>,
    pub(super) urls: Option<Vec<String>>,
    pub(super) directories: Option<Vec<PathBuf>>,
    pub(super) config: Option<toml::Table>,
    pub(super) replace_builtin: Option<super::replace::FileReplace>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCommand {
    pub(super) program: String,
    #[serde(default)]
    pub(super) args: Vec<String>,
}
