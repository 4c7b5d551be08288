//! `[audit]` and the failed-auth throttle of `[auth]` in `tether.toml`: the plain
//! settings `audit` and `throttle` take. What they do lives with those modules.

use std::time::Duration;

use super::ConfigError;
use super::file::{FileAudit, FileAuth};

/// The audit log's rotation and sampling (`[audit]` in `tether.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Size at which `audit.jsonl` is rotated to `audit.jsonl.1`, in bytes.
    pub max_file_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` … `audit.jsonl.N`); older ones are deleted.
    pub keep_files: usize,
    /// Lines per second written for one kind of high-volume event (one action from one
    /// address, such as refused authentication); the rest are counted and reported in
    /// one "suppressed" line.
    pub sampled_per_second: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 << 20,
            keep_files: 4,
            sampled_per_second: 10,
        }
    }
}

/// Failed-authentication throttling per remote address (`[auth]` in `tether.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed attempts one address may make in a window before it is refused (429)
    /// until the window ends.
    pub max_failures: u32,
    /// The window failures are counted in (a minute; not configurable, the setting
    /// is named per minute).
    pub window: Duration,
    /// Addresses tracked at once; beyond it the oldest window is forgotten, so a
    /// flood from many addresses costs bounded memory.
    pub max_addresses: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 20,
            window: Duration::from_secs(60),
            max_addresses: 100_000,
        }
    }
}

/// `[audit]` over the defaults.
pub(super) fn audit_config(file: FileAudit) -> Result<AuditConfig, ConfigError> {
    let mut c = AuditConfig::default();
    if let Some(mib) = file.max_file_mib {
        if mib == 0 || mib > 4096 {
            return Err(ConfigError::Invalid(format!(
                "audit.max_file_mib must be 1-4096, not {mib}"
            )));
        }
        c.max_file_bytes = mib << 20;
    }
    if let Some(n) = file.keep_files {
        if n > 1000 {
            return Err(ConfigError::Invalid(format!(
                "audit.keep_files must be 0-1000, not {n}"
            )));
        }
        c.keep_files = n;
    }
    if let Some(n) = file.sampled_per_second {
        if n == 0 {
            return Err(ConfigError::Invalid(
                "audit.sampled_per_second must be > 0".into(),
            ));
        }
        c.sampled_per_second = n;
    }
    Ok(c)
}

/// The throttle settings of `[auth]` over the defaults.
pub(super) fn throttle_config(file: FileAuth) -> Result<ThrottleConfig, ConfigError> {
    let mut c = ThrottleConfig::default();
    if let Some(n) = file.max_failures_per_minute {
        if n == 0 {
            return Err(ConfigError::Invalid(
                "auth.max_failures_per_minute must be > 0".into(),
            ));
        }
        c.max_failures = n;
    }
    if let Some(n) = file.max_tracked_addresses {
        if n == 0 {
            return Err(ConfigError::Invalid(
                "auth.max_tracked_addresses must be > 0".into(),
            ));
        }
        c.max_addresses = n;
    }
    Ok(c)
}
