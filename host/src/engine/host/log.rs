//! `tether:provider/log`: provider log lines in the host's log, tagged with the
//! environment and provider, cut to a bounded length with control characters escaped
//! (so a message cannot forge other log lines) and rate-limited so a flooding provider
//! cannot drown the host's log or its disk.

use std::time::Instant;

use crate::engine::bindings::log::{Host, Level};
use crate::engine::instance::HostState;
use crate::sync::MutexExt;

/// Lines a provider may log in a burst.
const BURST: f64 = 200.0;
/// Lines per second it may log after the burst.
const PER_SECOND: f64 = 50.0;

/// A token bucket over one instance's log lines, counting what it dropped. Shared
/// (behind an `Arc`) by the instance and the output logs of the children it spawns,
/// so a provider cannot pass its budget by logging through child processes.
#[derive(Debug)]
pub(crate) struct LogBudget {
    bucket: std::sync::Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            bucket: std::sync::Mutex::new(Bucket {
                tokens: BURST,
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }
}

impl LogBudget {
    /// Whether one more line may be written now; if so, how many were dropped before it.
    pub(crate) fn take(&self, now: Instant) -> Option<u64> {
        let mut b = self.bucket.locked();
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * PER_SECOND).min(BURST);
        if b.tokens < 1.0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.suppressed))
    }
}

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let (env, provider) = (&self.env_id, &self.provider);
        let Some(dropped) = self.log_budget.take(Instant::now()) else {
            return Ok(());
        };
        if dropped > 0 {
            tracing::warn!(env = %env, provider = %provider, dropped, "provider log rate limit: lines suppressed");
        }
        let message = crate::untrusted::logged(&message);
        match level {
            Level::Trace => tracing::trace!(env = %env, provider = %provider, "{message}"),
            Level::Debug => tracing::debug!(env = %env, provider = %provider, "{message}"),
            Level::Info => tracing::info!(env = %env, provider = %provider, "{message}"),
            Level::Warn => tracing::warn!(env = %env, provider = %provider, "{message}"),
            Level::Error => tracing::error!(env = %env, provider = %provider, "{message}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_rate() {
        let budget = LogBudget::default();
        let start = Instant::now();
        let allowed = (0..10_000).filter(|_| budget.take(start).is_some()).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(budget.take(start + Duration::from_secs(1)), Some(9_800));
    }
}
