//! How far an environment's start has come: the phase it is in and since when, so a
//! client can show where a slow start is (`startPhase` in the API and in
//! `environmentStatus` frames).

use serde::Serialize;
use utoipa::ToSchema;

/// The phases of a start, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StartPhase {
    /// Compiling or instantiating the provider's component with its capabilities.
    Instantiating,
    /// The provider's `start` is making or reconnecting the resource and launching
    /// the runtime there.
    ProviderStart,
    /// The provider has started; the runtime has not connected back yet.
    WaitingForRuntime,
    /// The runtime is connected: the start is complete.
    Running,
}

/// The current (or, after a failure, the last) start of an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StartProgress {
    /// Where the start is, or where it failed.
    pub phase: StartPhase,
    /// When it entered `phase` (RFC 3339).
    pub phase_since: String,
    /// When the start began (RFC 3339).
    pub started_at: String,
}

impl StartProgress {
    /// A start beginning now.
    pub(crate) fn begin() -> Self {
        let now = crate::store::now();
        Self {
            phase: StartPhase::Instantiating,
            phase_since: now.clone(),
            started_at: now,
        }
    }

    /// Moves on to `phase`; returns whether anything changed.
    pub(crate) fn enter(&mut self, phase: StartPhase) -> bool {
        if self.phase == phase {
            return false;
        }
        self.phase = phase;
        self.phase_since = crate::store::now();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_named_as_the_protocol_documents_them() {
        let names: Vec<String> = [
            StartPhase::Instantiating,
            StartPhase::ProviderStart,
            StartPhase::WaitingForRuntime,
            StartPhase::Running,
        ]
        .iter()
        .map(|p| {
            serde_json::to_value(p)
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect();
        assert_eq!(
            names,
            [
                "\"instantiating\"",
                "\"provider-start\"",
                "\"waiting-for-runtime\"",
                "\"running\""
            ]
        );
    }

    #[test]
    fn entering_the_same_phase_changes_nothing() {
        let mut progress = StartProgress::begin();
        assert!(!progress.enter(StartPhase::Instantiating));
        assert!(progress.enter(StartPhase::ProviderStart));
        assert_eq!(progress.phase, StartPhase::ProviderStart);
    }
}
