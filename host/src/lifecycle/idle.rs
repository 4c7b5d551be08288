//! Idle stops: a running environment with `idleStopSecs` is stopped (desired state
//! `stopped`, `stopReason: idle`, an audit line by `system`) once it has had no app
//! connection and no relayed frame for that long, unless its runtime said
//! `runtimeBusy`. The relay keeps the activity in atomics on its hub; one sweep for
//! the whole host reads them on its own schedule, so the relay's path takes no lock
//! for it. The sweep, not a watcher per running instance: with ten thousand running
//! environments, per-instance watchers woke the host twenty thousand times a second
//! (each taking the store's lock) to find, almost always, nothing to do; the sweep
//! wakes twice a second and looks only at the records that have a timeout.

use std::sync::Arc;
use std::time::Duration;

use super::Manager;
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

impl Manager {
    /// Runs the idle sweep until the host closes: every [`LOOK_EVERY`], the running
    /// environments with a timeout are looked at and the ones idle past it stopped.
    /// The timeout is read from the record on every look, so a PATCH applies to the
    /// running instance.
    pub(super) fn spawn_idle_sweep(&self) {
        let this = self.clone();
        let closing = self.shared.closing.clone();
        self.driver().spawn(async move {
            let mut tick = tokio::time::interval(LOOK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tick.tick() => {}
                }
                this.sweep_idle().await;
            }
        });
    }

    /// One look at every running environment with an idle timeout.
    async fn sweep_idle(&self) {
        // One pass under the store's lock, copying only the few that have a timeout.
        let watched = self.shared.store.select(|r| {
            let setting = Setting::of(r);
            let timed = setting.idle_stop_secs.is_some_and(|s| s > 0);
            (timed && setting.desired == DesiredState::Running).then(|| (r.id.clone(), setting))
        });
        let now = now_ms();
        for (id, setting) in watched {
            let Some(env) = self.shared.envs.get(&id) else {
                continue;
            };
            let status = env.live().status;
            let due = stops_at_ms(&env, setting, status).is_some_and(|at| at <= now);
            if due && let Some(secs) = setting.idle_stop_secs {
                self.driver().idle_stop(&env, secs).await;
            }
        }
    }
}

impl Driver {
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
