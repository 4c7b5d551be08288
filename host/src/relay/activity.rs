//! When an environment's hub last saw life, for idle stops: the time of the last
//! relayed frame or app arrival/departure, and whether the runtime says it is busy.
//! Both are atomics, written on the relay's hot path without a lock; the lifecycle
//! reads them on its own schedule (`lifecycle/idle.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The frame type a runtime sends to hold its environment awake (or let it sleep).
pub(super) const RUNTIME_BUSY: &str = "runtimeBusy";

/// One hub's activity.
#[derive(Debug, Default)]
pub struct Activity {
    /// Milliseconds since the Unix epoch of the last activity; 0 before any.
    last_ms: AtomicU64,
    /// The runtime's latest `runtimeBusy` says it is working.
    busy: AtomicBool,
}

impl Activity {
    /// Something happened now.
    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// When something last happened, in milliseconds since the Unix epoch.
    pub fn last_ms(&self) -> Option<u64> {
        Some(self.last_ms.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Whether the runtime holds the environment awake.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// The runtime says it is (or is no longer) working; either way that is activity.
    pub(super) fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
        self.touch();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `{"type":"runtimeBusy","busy":B}`'s `B`; `None` if the frame is not a well-formed one.
pub(super) fn busy_flag(text: &str) -> Option<bool> {
    #[derive(serde::Deserialize)]
    struct Busy {
        busy: bool,
    }
    serde_json::from_str::<Busy>(text).ok().map(|b| b.busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_and_busy_are_recorded() {
        let a = Activity::default();
        assert_eq!(a.last_ms(), None);
        a.touch();
        assert!(a.last_ms().is_some_and(|ms| ms + 5_000 > now_ms()));
        a.set_busy(true);
        assert!(a.busy());
        a.set_busy(false);
        assert!(!a.busy());
    }

    #[test]
    fn busy_frames_are_read_strictly() {
        assert_eq!(
            busy_flag(r#"{"type":"runtimeBusy","busy":true}"#),
            Some(true)
        );
        assert_eq!(
            busy_flag(r#"{"type":"runtimeBusy","busy":false}"#),
            Some(false)
        );
        assert_eq!(busy_flag(r#"{"type":"runtimeBusy","busy":"yes"}"#), None);
        assert_eq!(busy_flag(r#"{"type":"runtimeBusy"}"#), None);
    }
}
