//! Resume on traffic: what an app's connect does to a stopped environment. One that
//! went to sleep for idleness runs again on the same record (so the same resource and
//! workspace); one its user stopped on purpose stays stopped unless the app asks with
//! `start=true`. The app is admitted at once, and what it sends waits in the relay
//! until the runtime is up; a start that fails closes it with 4014.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::envs::Env;
use super::{LifecycleError, Manager, Status};
use crate::relay::{AppThread, Connection, Resume};
use crate::store::{DesiredState, Record, StopReason};
use crate::tenancy::Principal;

/// Who a stopped environment runs again for on an app's connect, besides an app that
/// asks with `start=true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wakes {
    /// Only one stopped for idleness (a connect by id: an environment created
    /// stopped, or stopped before there were reasons, waits for a start).
    Asleep,
    /// Any not stopped on purpose (a connect through a template: the template
    /// means "have it running").
    NotStoppedOnPurpose,
}

/// Whether `record` should be asked to run for an app's connect; an error if its user
/// stopped it on purpose and the app did not ask to start it.
pub(super) fn wakes(record: &Record, start: bool, who: Wakes) -> Result<bool, LifecycleError> {
    if record.desired_state == DesiredState::Running {
        return Ok(false);
    }
    match record.stop_reason {
        _ if start => Ok(true),
        Some(StopReason::User) => Err(LifecycleError::StoppedOnPurpose(format!(
            "environment {} was stopped on purpose; connect with start=true to start it",
            record.id
        ))),
        Some(StopReason::Idle) => Ok(true),
        None => Ok(who == Wakes::NotStoppedOnPurpose),
    }
}

impl Manager {
    /// Asks `record` to run again, within its owner's quota of running environments.
    pub(super) async fn wake(
        &self,
        who: &Principal,
        record: Record,
    ) -> Result<Record, LifecycleError> {
        // A token limited to other environments does not reach this one.
        if !who.reaches(&record.owner, &record.id) {
            return Err(LifecycleError::NotFound(record.id));
        }
        self.check_users_start(who, &record)?;
        let admitted = self.admit(&record.owner, false).await?;
        (self.shared.quotas).check_running(&self.shared.store, &record.owner, Some(&record.id))?;
        let id = record.id.clone();
        async {
            self.want_running(&id).await?;
            self.admitted(admitted).await;
            tracing::info!("stopped environment asked to run again by an app's connect");
            self.known_record(&id)
        }
        .instrument(tracing::info_span!("wake", env = %id))
        .await
    }

    /// Admits `who`'s app to `env` (first frame `first`, if any) and drives `env`
    /// toward its desired state in the background (a no-op when it runs already); a
    /// start that ends in `error` closes the app with 4014.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit_starting(
        &self,
        who: &Principal,
        record: Record,
        env: Arc<Env>,
        thread: AppThread,
        resume: Option<Resume>,
        first: Option<String>,
        span: tracing::Span,
    ) -> Result<Connection, LifecycleError> {
        let start_failed = CancellationToken::new();
        let admitted = span.in_scope(|| {
            let failed = Some(start_failed.clone());
            self.admit_app(who, record, &env, thread, resume, first, failed)
        });
        let driver = self.driver().clone();
        self.driver().spawn(
            async move {
                let _op = env.op.lock().await;
                driver.converge_locked(&env).await;
                if env.live().status == Status::Error {
                    start_failed.cancel();
                }
            }
            .instrument(span),
        );
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(reason: Option<StopReason>) -> Record {
        let mut record = Record::new("id".into(), "n".into(), "p".into(), Default::default());
        record.desired_state = DesiredState::Stopped;
        record.stop_reason = reason;
        record
    }

    #[test]
    fn a_connect_wakes_what_slept_and_never_what_its_user_stopped() {
        use Wakes::*;
        let running = Record {
            desired_state: DesiredState::Running,
            ..stopped(Some(StopReason::Idle))
        };
        for who in [Asleep, NotStoppedOnPurpose] {
            assert!(!wakes(&running, true, who).unwrap());
            assert!(wakes(&stopped(Some(StopReason::Idle)), false, who).unwrap());
            assert!(matches!(
                wakes(&stopped(Some(StopReason::User)), false, who),
                Err(LifecycleError::StoppedOnPurpose(_))
            ));
            assert!(wakes(&stopped(Some(StopReason::User)), true, who).unwrap());
            assert!(wakes(&stopped(None), true, who).unwrap());
        }
        assert!(!wakes(&stopped(None), false, Asleep).unwrap());
        assert!(wakes(&stopped(None), false, NotStoppedOnPurpose).unwrap());
    }
}
