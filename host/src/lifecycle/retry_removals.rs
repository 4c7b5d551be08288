//! The retry of failed removals: a background task that, once a second, takes the
//! removals journal's due entries (`removals`) and has a fresh instance of the
//! provider destroy each resource, as a delete of a stopped environment does. Up to
//! [`AT_ONCE`] attempts run side by side, each entry in one attempt at a time, so a
//! provider (or a remote service) that hangs until the stop timeout holds back only
//! its own entries, not every other removal.
//!
//! The instance runs on a detached live side (a hub no peer reaches, no registered
//! environment) with a scratch workspace, `.codebolt/removal-workspaces/<id>/`, not the
//! environment's: the delete removed that, and its name may be another environment's
//! by now. The scratch directory is removed after each attempt, and any left by a
//! crash at start.
//!
//! Success (the provider's destroy returns; "already gone" is a success) removes the
//! entry. A failure, or a provider that is not loaded, counts an attempt and waits
//! `lifecycle.removal_retry_secs` doubled per attempt, at most an hour. It never gives
//! up: a resource left behind costs money until someone acts, so the entry stays, is
//! tried hourly and keeps `/healthz` degraded until it succeeds or an admin drops
//! it (`pending_removals`). A provider that can no longer
//! destroy without a start (replaced by one that cannot) is dropped with an error:
//! no retry could do it. Shutdown abandons the attempts in flight (their instances
//! shut down, their entries left as they were) and starts no more. An entry naming an
//! environment the records still hold, or the resource of one, is dropped unattempted:
//! only a hand edit makes one.

use std::path::PathBuf;
use std::time::Duration;

use tracing::Instrument;

use super::Manager;
use super::deadline::{GRACE, shut_down_within};
use super::removals::{Pending, Removals, delay};
use crate::audit::{Outcome, action};

/// How often the task looks for due entries.
const TICK: Duration = Duration::from_secs(1);
/// How long an attempt abandoned at shutdown is left (the host is going away).
const ABANDONED: Duration = Duration::from_secs(24 * 3600);
/// Most attempts in flight at once: each holds a provider instance.
const AT_ONCE: usize = 4;

/// The directory of retries' scratch workspaces.
fn scratch_root(manager: &Manager) -> PathBuf {
    (manager.shared.config.get().codebolt_dir()).join("removal-workspaces")
}

/// How one attempt ended.
enum Tried {
    /// The provider removed the resource (or found it gone).
    Removed,
    /// It could not, saying why: counted, tried again later.
    Failed(String),
    /// Its provider can no longer destroy without a start: no retry could do it.
    Impossible,
    /// Shutdown came first: not an attempt.
    Abandoned,
}

/// An entry's attempt: released when dropped, however it ended (a panic or a
/// cancelled task included), so the entry is never left marked in flight.
struct Attempt<'a> {
    removals: &'a Removals,
    id: String,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.removals.release(&self.id);
    }
}

impl Manager {
    /// Starts the retry task, after removing scratch workspaces a crash left.
    pub(super) fn spawn_removal_retries(&self) {
        let root = scratch_root(self);
        let data_dir = self.shared.config.get().data_dir.clone();
        // Through no link in place of `.codebolt` or of the directory itself.
        if let Err(e) = crate::own_dirs::remove_dir_all(&data_dir, &root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %root.display(), error = %e, "could not remove the scratch workspaces of earlier removals");
        }
        let this = self.clone();
        self.driver().spawn(
            async move {
                let closing = this.shared.closing.clone();
                let removals = &this.shared.driver.shared.removals;
                let mut tick = tokio::time::interval(TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = closing.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    // What this host's entry in the cluster says of it, kept current.
                    if let Some(cluster) = this.cluster() {
                        cluster.set_pending_removals(removals.pending());
                        cluster.set_runtimes_connected(this.runtimes_connected_here());
                    }
                    for pending in removals.take_due(AT_ONCE) {
                        let id = pending.record.id.clone();
                        let manager = this.clone();
                        let span = tracing::info_span!("removal_retry", env = %id);
                        this.driver().spawn(
                            async move {
                                let removals = &manager.shared.driver.shared.removals;
                                let _attempt = Attempt { removals, id };
                                manager.retry_removal(pending).await;
                            }
                            .instrument(span),
                        );
                    }
                }
            }
            .instrument(tracing::info_span!("removal_retries")),
        );
    }

    /// One attempt at a pending removal.
    async fn retry_removal(&self, pending: Pending) {
        let record = &pending.record;
        let id = record.id.as_str();
        let driver = &self.shared.driver;
        let removals = &driver.shared.removals;
        let attempt = pending.attempts.saturating_add(1);
        // A journal edited by hand could name a live environment or its resource: its
        // provider must never be told to destroy that.
        let store = &self.shared.store;
        let in_use = store.peek(id, |_| ()).is_some()
            || (store
                .find(|r| r.provider == record.provider && r.resource_id == record.resource_id))
            .is_some();
        if in_use {
            tracing::error!(env = %id, resource = ?record.resource_id.as_deref().map(crate::untrusted::logged), "a pending removal names an environment or a resource still in use (the journal was edited?); dropped without calling the provider");
            self.removal_settled(id);
            return;
        }
        tracing::info!(env = %id, attempt, "trying again to remove a deleted environment's resource");
        let env = self.shared.envs.detached(id);
        let workspace = scratch_root(self).join(id);
        let closing = self.shared.closing.clone();
        let tried = async {
            let handle = match driver.destroyer(&env, record, Some(&workspace)).await {
                Ok(Some(handle)) => handle,
                Ok(None) => return Tried::Impossible,
                Err(e) => return Tried::Failed(e),
            };
            let result = tokio::select! {
                r = driver.destroy_with(&env, record, &handle, Some(&workspace)) => Some(r),
                _ = closing.cancelled() => None,
            };
            shut_down_within(&env.id, &handle, GRACE).await;
            match result {
                None => Tried::Abandoned,
                Some(Ok(())) => Tried::Removed,
                Some(Err(e)) => Tried::Failed(e),
            }
        }
        .await;
        env.hub.close("removal done");
        let data_dir = self.shared.config.get().data_dir.clone();
        // Through no link in place of the scratch directories' directory.
        let removed = tokio::task::spawn_blocking(move || {
            crate::own_dirs::remove_dir_all(&data_dir, &workspace)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(env = %id, error = %e, "could not remove a removal's scratch workspace");
        }
        match tried {
            Tried::Impossible => {
                tracing::error!(env = %id, resource = ?record.resource_id, "the provider can no longer remove a resource without a start; remove it by hand (dropped from the removals journal)");
                self.removal_settled(id);
            }
            // The next start tries again (every entry is due then).
            Tried::Abandoned => {
                removals.postpone(id, ABANDONED);
            }
            Tried::Removed => {
                tracing::info!(env = %id, attempts = attempt, "the provider removed the resource of a deleted environment");
                let reason = format!("removed on attempt {attempt}");
                driver.audit_system(id, action::ENVIRONMENT_REMOVAL_RETRY, Outcome::Ok, &reason);
                self.removal_settled(id);
            }
            Tried::Failed(error) => {
                let base = self.shared.config.get().lifecycle.removal_retry;
                let shown = crate::untrusted::logged(&error);
                let reason = format!("attempt {attempt}: {shown}");
                let failed = Outcome::Failed;
                driver.audit_system(id, action::ENVIRONMENT_REMOVAL_RETRY, failed, &reason);
                match removals.failed_again(record, &error, base) {
                    Ok(None) => {
                        tracing::info!(env = %id, error = %shown, "the provider could not remove the resource, but its entry was dropped meanwhile; not tried again")
                    }
                    Ok(Some((attempts, wait))) => {
                        tracing::warn!(env = %id, attempts, error = %shown, retry_in_secs = wait.as_secs(), "the provider could not remove the resource; tried again later")
                    }
                    Err(e) => {
                        // Memory kept the entry as it was: the next try waits as long.
                        removals.postpone(id, delay(base, attempt));
                        tracing::error!(env = %id, error = %shown, journal = %e, "the provider could not remove the resource and the removals journal was not updated")
                    }
                }
            }
        }
    }

    /// The entry of `id` is done with.
    fn removal_settled(&self, id: &str) {
        let removals = &self.shared.driver.shared.removals;
        if let Err(e) = removals.done(id).map(drop) {
            // Kept in memory and on disk: a later attempt finds it gone and succeeds.
            removals.postpone(id, Duration::from_secs(60));
            tracing::error!(env = %id, error = %e, "could not take a finished removal out of the removals journal");
        }
    }

    /// How many removals of deleted environments' resources are pending.
    pub(crate) fn removals_pending(&self) -> usize {
        self.shared.driver.shared.removals.pending()
    }
}
