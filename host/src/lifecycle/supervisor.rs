//! Supervision of running environments: the provider's `check-health` on an interval,
//! the runtime's connection with a grace period to come back, and the restart policy
//! (`never`, `on-failure`, `always`) with exponential backoff, jitter, a retry cap and
//! a reset once an environment has run stably.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Status;
use super::driver::Driver;
use super::envs::Env;
use crate::audit::{Outcome, action};
use crate::config::RestartConfig;
use crate::engine::{Call, HealthState, ProviderHandle, Reply};
use crate::store::{DesiredState, RestartPolicy};

/// Restart times kept in a record.
const HISTORY: usize = 10;

impl Driver {
    /// Watches a started instance until it fails or `cancel` fires (stop, delete).
    pub(super) fn supervise(
        &self,
        env: Arc<Env>,
        handle: ProviderHandle,
        cancel: CancellationToken,
    ) {
        let this = self.clone();
        let span = tracing::info_span!("supervise", env = %env.id);
        // The task waits out a health interval almost all its life; the futures of a
        // check and of a failure are boxed while they run, so the task itself stays
        // small (inline, they made it about 8 KiB per running environment).
        self.spawn(
            async move {
                let health = this.shared.config.get().health.clone();
                let mut failures = 0u32;
                let mut away_since: Option<Instant> = None;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(health.interval) => {}
                    }
                    if env.hub.runtime_connected() {
                        away_since = None;
                    } else {
                        let since = *away_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= health.runtime_grace {
                            let reason = format!(
                                "runtime disconnected for more than {:?}",
                                health.runtime_grace
                            );
                            return Box::pin(this.on_failure(env, handle, reason)).await;
                        }
                    }
                    let verdict = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = Box::pin(handle.call(Call::Health, health.timeout)) => r,
                    };
                    match verdict {
                        Ok(Reply::Health(h)) if h.state != HealthState::Unhealthy => failures = 0,
                        Ok(Reply::Health(h)) => {
                            failures += 1;
                            if failures >= health.failure_threshold {
                                let detail = h.detail.unwrap_or_else(|| "no detail".into());
                                let reason = format!("provider reports unhealthy: {detail}");
                                return Box::pin(this.on_failure(env, handle, reason)).await;
                            }
                        }
                        Ok(other) => {
                            let reason = format!("provider answered check-health with {other:?}");
                            return Box::pin(this.on_failure(env, handle, reason)).await;
                        }
                        // The instance is dead (trap, timeout): no point asking again.
                        Err(e) => {
                            return Box::pin(this.on_failure(env, handle, e.to_string())).await;
                        }
                    }
                }
            }
            .instrument(span),
        );
    }

    /// `handle`'s environment failed: tear the instance down, then restart it as its
    /// policy says, retrying failed restarts with growing delays.
    pub(super) async fn on_failure(&self, env: Arc<Env>, handle: ProviderHandle, reason: String) {
        {
            let _op = env.op.lock().await;
            let current = env.live().provider.clone();
            if !current.is_some_and(|h| h.same_instance(&handle)) {
                return; // already stopped or replaced
            }
            let shown = crate::untrusted::logged(&reason);
            tracing::warn!(env = %env.id, reason = %shown, "environment failed");
            let _ = self.take_instance(&env);
            let timeout = self.shared.config.get().lifecycle.stop_timeout;
            // Let the provider release what it can; a dead instance answers at once.
            let _ = handle.call(Call::Stop, timeout).await;
            super::deadline::shut_down_within(&env.id, &handle, timeout).await;
            env.hub
                .close_runtime(crate::relay::CLOSE_GONE, "environment failed");
        }
        let mut reason = reason;
        loop {
            let Some(delay) = self.next_restart(&env, &reason).await else {
                return;
            };
            tokio::select! {
                _ = env.deleting.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            let _op = env.op.lock().await;
            let Some(record) = self.shared.store.get(&env.id) else {
                return;
            };
            if record.desired_state != DesiredState::Running || env.live().provider.is_some() {
                return; // stopped (or started) by someone else meanwhile
            }
            let stamp = crate::store::now();
            let record = match self
                .shared
                .store
                .update(&env.id, |r| {
                    r.restarts += 1;
                    r.restart_history.push(stamp.clone());
                    let excess = r.restart_history.len().saturating_sub(HISTORY);
                    r.restart_history.drain(..excess);
                })
                .await
            {
                Ok(record) => record,
                Err(_) => return,
            };
            tracing::info!(env = %env.id, restarts = record.restarts, "restarting");
            match self.start_locked(&env, record).await {
                Ok(()) => {
                    self.audit_system(&env.id, action::ENVIRONMENT_RESTART, Outcome::Ok, &reason);
                    return;
                }
                Err(e) => {
                    let why = format!("{reason}; the restart failed: {e}");
                    self.audit_system(&env.id, action::ENVIRONMENT_RESTART, Outcome::Failed, &why);
                    reason = e;
                }
            }
        }
    }

    /// The delay before the next restart, or `None` (and `env` left in `error`) when
    /// the policy says not to restart.
    async fn next_restart(&self, env: &Env, reason: &str) -> Option<Duration> {
        let record = self.shared.store.get(&env.id)?;
        if record.desired_state != DesiredState::Running {
            return None;
        }
        let settings = self.shared.config.get();
        let config = &settings.restart;
        let attempt = {
            let mut live = env.live();
            if live
                .last_failure
                .is_some_and(|at| at.elapsed() >= config.stable_after)
            {
                live.attempt = 0;
            }
            live.last_failure = Some(Instant::now());
            live.attempt
        };
        let give_up = match record.restart_policy {
            RestartPolicy::Never => Some(reason.to_owned()),
            RestartPolicy::OnFailure if attempt >= config.max_retries => {
                Some(format!("{reason} (gave up after {attempt} restarts)"))
            }
            _ => None,
        };
        if let Some(final_reason) = give_up {
            self.fail(env, final_reason).await;
            return None;
        }
        env.live().attempt = attempt + 1;
        let _ = self
            .shared
            .store
            .update(&env.id, |r| {
                r.last_error = Some(crate::untrusted::cut(
                    reason,
                    crate::untrusted::MAX_LAST_ERROR,
                ))
            })
            .await;
        self.set_status(env, Status::Restarting);
        let delay = backoff(config, attempt);
        let shown = crate::untrusted::logged(reason);
        tracing::info!(env = %env.id, attempt, ?delay, reason = %shown, "restart scheduled");
        Some(delay)
    }
}

/// Exponential backoff with ±20 % jitter, capped.
fn backoff(config: &RestartConfig, attempt: u32) -> Duration {
    let base = config
        .initial_backoff
        .saturating_mul(2u32.saturating_pow(attempt.min(20)))
        .min(config.max_backoff);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
        .min(config.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let c = RestartConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_retries: 5,
            stable_after: Duration::from_secs(60),
        };
        for (attempt, nominal) in [(0, 100), (1, 200), (2, 400), (3, 800)] {
            let d = backoff(&c, attempt).as_millis();
            assert!(
                d >= nominal * 8 / 10 && d <= nominal * 12 / 10,
                "{attempt}: {d}"
            );
        }
        assert!(backoff(&c, 10) <= Duration::from_secs(2));
        assert!(backoff(&c, u32::MAX) <= Duration::from_secs(2));
    }
}
