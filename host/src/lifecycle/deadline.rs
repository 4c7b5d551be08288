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
use crate::engine::ProviderHandle;
use crate::store::Record;

/// Past a transition's timeout, how long tearing down may still take before the
/// transition is ended anyway.
pub(super) const GRACE: Duration = Duration::from_secs(2);

/// What a transition that ran out of time reports.
pub(super) fn overran(what: &str, timeout: Duration) -> String {
    format!(
        "the {what} did not finish within its timeout ({} ms)",
        timeout.as_millis()
    )
}

/// Ends `handle`'s instance, waiting at most `limit`; false if it did not end in
/// time (it is abandoned: its actor ends once its current call does).
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
                let limit = this.shared.config.lifecycle.stop_timeout;
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
