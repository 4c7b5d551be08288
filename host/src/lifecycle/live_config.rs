//! The operator settings in force, swapped whole when `tether.toml` is reloaded.
//!
//! Every reader takes the current [`ServeConfig`] as one `Arc` snapshot, so a start
//! sees one consistent version from beginning to end, and an instance keeps the
//! grant and limits it was started with. Next to it: the state of the last reload,
//! which `GET /api/v1/config/status` shows. The reload itself (reading, diffing,
//! logging) is `config_reload`'s.

use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::{ConfigDiff, ServeConfig};
use crate::sync::{MutexExt, RwLockExt};

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Trigger {
    /// The file watcher saw the file change.
    File,
    /// The host received `SIGHUP`.
    Sighup,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = ReloadOutcome)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Outcome {
    /// The new settings are in force.
    Applied,
    /// The file says what the settings in force say.
    Unchanged,
    /// The file is invalid; the last good settings stay in force.
    Failed,
}

/// One reload, as the status shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReloadReport {
    /// When it happened (RFC 3339).
    pub at: String,
    /// What started it.
    pub trigger: Trigger,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Keys added, removed or changed (names only, never values).
    pub changed: Vec<String>,
    /// Of those, the ones that wait for a restart of the host.
    pub needs_restart: Vec<String>,
}

/// `GET /api/v1/config/status`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigStatus {
    /// The file read (or where one is expected when there is none).
    pub path: String,
    /// Whether the file exists (`false`: the built-in defaults are in force).
    pub found: bool,
    /// Whether it was named with `--config`.
    pub explicit: bool,
    /// When the settings in force were loaded (RFC 3339).
    pub loaded_at: String,
    /// The last reload, if any since the host started.
    #[schema(required = true)]
    pub last_reload: Option<ReloadReport>,
    /// Keys changed since the host started that only a restart applies.
    pub pending_restart: Vec<String>,
}

#[derive(Debug)]
struct State {
    /// The file's table as last applied: the base the next reload is compared with.
    /// Never shown or logged (values may be secrets).
    applied: toml::Table,
    /// The table the host started with, for `pending_restart`.
    started: toml::Table,
    loaded_at: SystemTime,
    last: Option<ReloadReport>,
}

/// A cloneable handle on the settings in force.
#[derive(Clone)]
pub(crate) struct LiveConfig {
    current: Arc<RwLock<Arc<ServeConfig>>>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig").finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// Settings loaded at start-up from a file whose table is `table`.
    pub(crate) fn new(config: ServeConfig, table: toml::Table) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(config))),
            state: Arc::new(Mutex::new(State {
                started: table.clone(),
                applied: table,
                loaded_at: SystemTime::now(),
                last: None,
            })),
        }
    }

    /// The settings in force now.
    pub(crate) fn get(&self) -> Arc<ServeConfig> {
        self.current.read_locked().clone()
    }

    /// The table last applied (to compare a re-read file with).
    pub(super) fn applied_table(&self) -> toml::Table {
        self.state.locked().applied.clone()
    }

    /// Puts `config` (read from `table`) in force and records the reload.
    pub(super) fn apply(&self, config: ServeConfig, table: toml::Table, report: ReloadReport) {
        *self.current.write_locked() = Arc::new(config);
        let mut state = self.state.locked();
        state.applied = table;
        state.loaded_at = SystemTime::now();
        state.last = Some(report);
    }

    /// Records a reload that changed nothing in force.
    pub(super) fn record(&self, report: ReloadReport) {
        self.state.locked().last = Some(report);
    }

    /// The status the API shows.
    pub(crate) fn status(&self) -> ConfigStatus {
        let source = self.get().source.clone();
        let state = self.state.locked();
        ConfigStatus {
            path: source.path.display().to_string(),
            found: source.found,
            explicit: source.explicit,
            loaded_at: crate::tenancy::stamp(state.loaded_at),
            last_reload: state.last.clone(),
            pending_restart: ConfigDiff::between(&state.started, &state.applied).needing_restart(),
        }
    }
}
