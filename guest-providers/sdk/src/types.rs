//! Conveniences on the WIT record types re-exported at the crate root: health
//! reports, capability requests and key/value entries.

use crate::{Capabilities, CommandRequest, Entry, Health, HealthState};

impl Health {
    /// Healthy, with no detail.
    pub fn healthy() -> Self {
        Self {
            state: HealthState::Healthy,
            detail: None,
        }
    }

    /// Working, but not fully (the detail says why).
    pub fn degraded(detail: impl Into<String>) -> Self {
        Self {
            state: HealthState::Degraded,
            detail: Some(detail.into()),
        }
    }

    /// Not working (the detail says why).
    pub fn unhealthy(detail: impl Into<String>) -> Self {
        Self {
            state: HealthState::Unhealthy,
            detail: Some(detail.into()),
        }
    }
}

impl Default for Capabilities {
    /// Asks for nothing.
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            urls: Vec::new(),
            directories: Vec::new(),
        }
    }
}

impl CommandRequest {
    /// Asks to run `program` with arguments matching `args` (`*` matches one
    /// argument, `**` the rest).
    pub fn new<I, S>(program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

impl Entry {
    /// A key/value pair.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}
