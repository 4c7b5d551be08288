//! The operator's hand on the removals journal (`removals`): what is pending, "try this
//! one now" (after fixing the cause), and "drop this one" (the resource was removed by
//! hand, or is to be kept), without stopping the host to edit the file.

use serde::Serialize;
use utoipa::ToSchema;

use super::Manager;
use super::removals::{Pending, RemovalsError};
use crate::config::ServeConfig;
use crate::lifecycle::LifecycleError;
use crate::redact::ConfigValues;
use crate::store::{StorageProblem, StoreError};

/// A deleted environment whose resource the host still tries to remove.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RemovalView {
    /// The deleted environment's id.
    pub(crate) environment_id: String,
    /// Its name.
    pub(crate) name: String,
    /// Its provider, which is asked to remove the resource.
    pub(crate) provider: String,
    /// The user it belonged to.
    pub(crate) owner: String,
    /// The resource still to remove, as the provider named it.
    pub(crate) resource_id: Option<String>,
    /// Attempts that failed so far (the delete's own included).
    pub(crate) attempts: u32,
    /// What the last attempt said (a value of the operator's config quoted in it
    /// reads `<config:KEY>`).
    pub(crate) last_error: String,
    /// When the first attempt failed (RFC 3339).
    pub(crate) failed_at: String,
    /// When the next attempt is due (RFC 3339): the moment of the answer when it is due
    /// now, or an attempt is in flight.
    pub(crate) next_attempt_at: String,
    /// Whether an attempt is working on it now.
    pub(crate) in_flight: bool,
}

impl RemovalView {
    /// `pending` as shown, on a host whose settings are `config`: what its provider
    /// was handed and quoted back in `lastError` reads `<config:KEY>` (`crate::redact`).
    fn of(config: &ServeConfig, (pending, in_flight): (Pending, bool)) -> Self {
        let record = pending.record;
        let handed = ConfigValues::handed(config, &record.provider, record.template());
        let last_error = match handed.is_empty() {
            true => pending.last_error,
            false => handed.hide(&pending.last_error),
        };
        Self {
            environment_id: record.id,
            name: record.name,
            provider: record.provider,
            owner: record.owner,
            resource_id: record.resource_id,
            attempts: pending.attempts,
            last_error,
            failed_at: pending.failed_at,
            next_attempt_at: pending.next_attempt_at,
            in_flight,
        }
    }
}

/// The journal could not be written: said as for the records.
impl From<RemovalsError> for LifecycleError {
    fn from(e: RemovalsError) -> Self {
        match e {
            RemovalsError::Write { path, error } => LifecycleError::Store(StoreError::Storage {
                path: path.into(),
                problem: StorageProblem::of(&error),
                source: error,
            }),
            full @ RemovalsError::Full(_) => LifecycleError::Internal(full.to_string()),
        }
    }
}

impl Manager {
    /// Every pending removal, by environment id.
    pub(crate) fn removals(&self) -> Vec<RemovalView> {
        let removals = &self.shared.driver.shared.removals;
        let config = self.shared.config.get();
        let shown = |pending| RemovalView::of(&config, pending);
        removals.list().into_iter().map(shown).collect()
    }

    /// Makes `id`'s removal due now (the retry task takes it within a second, unless
    /// an attempt is in flight already); the entry as it is then, `None` if there is
    /// none.
    pub(crate) fn retry_removal_now(&self, id: &str) -> Option<RemovalView> {
        let removals = &self.shared.driver.shared.removals;
        if !removals.postpone(id, std::time::Duration::ZERO) {
            return None;
        }
        tracing::info!(env = %id, "an operator asked for the removal to be tried now");
        let config = self.shared.config.get();
        removals
            .get(id)
            .map(|pending| RemovalView::of(&config, pending))
    }

    /// Takes `id` out of the journal: the host no longer tries to remove its resource
    /// (an attempt in flight finishes, but a failure of it is not kept). The entry as
    /// it was; `None` if there was none.
    pub(crate) fn drop_removal(&self, id: &str) -> Result<Option<RemovalView>, LifecycleError> {
        let removals = &self.shared.driver.shared.removals;
        let in_flight = removals.get(id).is_some_and(|(_, busy)| busy);
        let Some(pending) = removals.done(id)? else {
            return Ok(None);
        };
        let resource = (pending.record.resource_id.as_deref()).map(crate::untrusted::logged);
        tracing::warn!(env = %id, resource = ?resource, "an operator dropped a pending removal: the host no longer tries to remove the resource");
        let config = self.shared.config.get();
        Ok(Some(RemovalView::of(&config, (pending, in_flight))))
    }
}
