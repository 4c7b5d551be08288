//! Idle stops: a running environment with `idleStopSecs` is stopped (desired state
//! `stopped`, `stopReason: idle`, an audit line by `system`) once it has had no app
//! connection and no relayed frame for that long, unless its runtime said
//! `runtimeBusy`. The relay keeps the activity in atomics on its hub; a watcher per
//! running instance reads them on its own schedule, so the relay's path takes no lock
//! for it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Status;
use super::driver::Driver;
use super::envs::Env;
use crate::audit::{Outcome, action};
use crate::relay::now_ms;
use crate::store::{DesiredState, Record, StopReason};

/// How often a watcher looks; the longest an idle stop comes late.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// What the view shows of an environment's idleness.
#[derive(Debug, Clone, Default)]
pub(crate) struct Idleness {
    /// RFC 3339 time of the last app arrival or departure or relayed frame.
    pub last_activity_at: Option<String>,
    /// RFC 3339 time the host will stop it for idleness, if nothing happens first.
    pub stops_at: Option<String>,
}

/// What of a record idleness depends on.
#[derive(Debug, Clone, Copy)]
struct Setting {
    idle_stop_secs: Option<u64>,
    desired: DesiredState,
}

impl Setting {
    fn of(record: &Record) -> Self {
        Self {
            idle_stop_secs: record.idle_stop_secs,
            desired: record.desired_state,
        }
    }
}

/// When `env` stops for idleness, in milliseconds since the Unix epoch: `None` when
/// it has no timeout, is not running, or an app or a busy runtime holds it awake.
fn stops_at_ms(env: &Env, setting: Setting, status: Status) -> Option<u64> {
    let timeout = setting
        .idle_stop_secs
        .filter(|&s| s > 0)
        .map(Duration::from_secs)?;
    if setting.desired != DesiredState::Running || status != Status::Running {
        return None;
    }
    let activity = env.hub.activity();
    if activity.busy() || env.hub.apps_connected() {
        return None;
    }
    let last = activity.last_ms()?;
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    Some(last.saturating_add(timeout_ms))
}

/// The idleness of `env` for its view.
pub(super) fn idleness(env: &Env, record: &Record, status: Status) -> Idleness {
    Idleness {
        last_activity_at: env.hub.activity().last_ms().and_then(stamp),
        stops_at: stops_at_ms(env, Setting::of(record), status).and_then(stamp),
    }
}

/// Milliseconds since the Unix epoch as RFC 3339.
fn stamp(ms: u64) -> Option<String> {
    let nanos = i128::from(ms).checked_mul(1_000_000)?;
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl Driver {
    /// Watches a started instance of `env` for idleness until `cancel` fires (the
    /// instance is taken down). The timeout is read from the record on every look,
    /// so a PATCH applies to the running instance.
    pub(super) fn watch_idle(&self, env: Arc<Env>, cancel: CancellationToken) {
        // A fresh start counts as activity: the countdown starts now.
        env.hub.activity().touch();
        let this = self.clone();
        let span = tracing::info_span!("idle", env = %env.id);
        self.spawn(
            async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(LOOK_EVERY) => {}
                    }
                    // Twice a second per running environment: a look, not a copy.
                    let Some(setting) = this.shared.store.peek(&env.id, Setting::of) else {
                        return;
                    };
                    let status = env.live().status;
                    let due = stops_at_ms(&env, setting, status).is_some_and(|at| at <= now_ms());
                    if due && let Some(secs) = setting.idle_stop_secs {
                        this.idle_stop(&env, secs).await;
                        return;
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Stops `env` for idleness: desired state `stopped`, reason `idle`, audited.
    async fn idle_stop(&self, env: &Arc<Env>, secs: u64) {
        let updated = self
            .shared
            .store
            .update(&env.id, |r| {
                r.desired_state = DesiredState::Stopped;
                r.stop_reason = Some(StopReason::Idle);
            })
            .await;
        if let Err(e) = updated {
            tracing::warn!(env = %env.id, error = %e, "idle stop not recorded");
            return;
        }
        let reason = format!("no app connection and no relayed frame for {secs} s");
        tracing::info!(env = %env.id, %reason, "stopping an idle environment");
        self.audit_system(&env.id, action::ENVIRONMENT_IDLE_STOP, Outcome::Ok, &reason);
        self.spawn_converge(env.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_rfc3339() {
        assert_eq!(stamp(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            stamp(1_700_000_000_500).as_deref(),
            Some("2023-11-14T22:13:20.5Z")
        );
    }
}
