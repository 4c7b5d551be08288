//! Deadlines on transitions: a start or a stop ends — running, stopped or `error`
//! with the reason — within its timeout (plus a short grace for tearing down), even
//! when a provider call, an instantiation or an instance's shutdown hangs. And the
//! last resort for an environment stuck anyway: the admin's force delete, which
//! forgets it without waiting for its provider.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::driver::Driver;
use super::envs::Env;
use super::{LifecycleError, Manager};
use crate::engine::ProviderHandle;
use crate::store::Record;
use crate::tenancy::Principal;

/// Past a transition's timeout, how long tearing down may still take before the
/// transition is ended anyway.
pub(super) const GRACE: Duration = Duration::from_secs(2);

/// What a transition that ran out of time reports.
pub(super) fn overran(what: &str, timeout: Duration) -> String {
    format!(
        "the {what} timed out after {timeout:?} (deadlines are set in [lifecycle] of tether.toml)"
    )
}

/// Ends `handle`'s instance, waiting at most `limit`; false if it did not end in
/// time (it is abandoned: its store goes once its current call ends).
pub(super) async fn shut_down_within(env: &str, handle: &ProviderHandle, limit: Duration) -> bool {
    if tokio::time::timeout(limit, handle.shutdown()).await.is_ok() {
        return true;
    }
    tracing::warn!(
        env,
        ?limit,
        "the provider instance did not shut down in time; abandoned"
    );
    false
}

impl Driver {
    /// Takes down what is left of a force-deleted environment in the background:
    /// its instance, without asking the provider anything, then its workspace once
    /// the instance (and every process it spawned) is gone. The provider's resource
    /// is left for the operator, whom the log tells.
    pub(super) fn forget_instance(&self, env: Arc<Env>, record: Record) {
        let this = self.clone();
        let span = tracing::info_span!("force_delete", env = %env.id);
        self.spawn(
            async move {
                let limit = this.shared.config.get().lifecycle.stop_timeout;
                let down = match this.take_instance(&env) {
                    Some(handle) => shut_down_within(&env.id, &handle, limit).await,
                    None => true,
                };
                if let Some(resource) = &record.resource_id {
                    let resource = crate::untrusted::logged(resource);
                    tracing::warn!(env = %env.id, %resource,
                        "force-deleted without the provider: remove its resource by hand");
                }
                if down {
                    this.remove_workspace(&env, &record).await;
                } else {
                    tracing::warn!(env = %env.id, "workspace kept: the instance may still use it");
                }
            }
            .instrument(span),
        );
    }
}

impl Manager {
    /// Forgets an environment at once, whatever it is doing: the record and the live
    /// side go now, the instance is ended in the background without asking the
    /// provider (its resource stays; the log says so). For an admin, for an
    /// environment stuck past every deadline; the API checks the scope.
    pub(crate) async fn force_delete(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<(), LifecycleError> {
        self.reachable(who, id)?;
        let env = self.known_env(id)?;
        env.deleting.cancel();
        let record = self.shared.store.remove(id).await?;
        self.shared.envs.forget(id);
        self.events().deleted(&record);
        self.shared.envs.close_hub(id, "environment deleted");
        tracing::warn!(env = %id, "environment force-deleted");
        self.driver().forget_instance(env, record);
        Ok(())
    }
}
