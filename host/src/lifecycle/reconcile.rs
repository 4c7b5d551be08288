//! Outside edits of `environments.json`: the store says what changed, and this
//! applies it — an added record appears (and starts if it should), a changed desired
//! state or config takes effect, a changed owner closes the apps admitted under the
//! old one, a removed record is stopped and forgotten.

use tracing::Instrument;

use super::Manager;
use crate::store::watch::{self, WatchError};
use crate::store::{Changes, StoreError};

/// Quiet time after the last file event before the file is read again.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);

impl Manager {
    /// Watches the records file and applies outside edits until shutdown.
    pub(crate) fn watch_records(&self) -> Result<(), WatchError> {
        let (guard, mut signals) = watch::watch(self.shared.store.path(), DEBOUNCE)?;
        let this = self.clone();
        self.shared.driver.spawn(
            async move {
                let _guard = guard;
                loop {
                    tokio::select! {
                        _ = this.shared.closing.cancelled() => return,
                        signal = signals.recv() => if signal.is_none() { return },
                    }
                    this.reload_records().await;
                }
            }
            .instrument(tracing::info_span!("records_watch")),
        );
        Ok(())
    }

    /// Reads the records file again and applies what changed.
    pub(crate) async fn reload_records(&self) {
        match self.shared.store.reload().await {
            Ok(Some(changes)) => self.apply(changes),
            Ok(None) => {}
            Err(e @ StoreError::Invalid { .. }) => {
                tracing::error!(error = %e, "records file edited into an invalid state; keeping the last good state")
            }
            Err(e) => tracing::error!(error = %e, "reading the records file failed"),
        }
    }

    pub(super) fn apply(&self, changes: Changes) {
        for id in changes.added {
            tracing::info!(env = %id, "record added outside the host");
            let env = self.shared.envs.add(&id);
            self.publish_created(&id);
            self.shared.driver.spawn_converge(env);
        }
        for before in changes.changed {
            let (Some(env), Some(after)) = (
                self.shared.envs.get(&before.id),
                self.shared.store.get(&before.id),
            ) else {
                continue;
            };
            let moved = after.owner != before.owner;
            if moved {
                tracing::info!(env = %env.id, owner = %after.owner, "owner changed outside the host; closing its apps");
                env.moved_owner();
            }
            self.publish_changed(&env.id, moved.then_some(before.owner.clone()));
            if after.desired_state != before.desired_state {
                tracing::info!(env = %env.id, desired = ?after.desired_state, "desired state changed outside the host");
                self.shared.driver.spawn_converge(env);
            } else if after.config != before.config && env.live().provider.is_some() {
                tracing::info!(env = %env.id, "config changed outside the host; restarting to apply it");
                self.shared.driver.spawn_restart(env);
            }
        }
        for gone in changes.removed {
            tracing::info!(env = %gone.id, "record removed outside the host");
            let Some(env) = self.shared.envs.forget(&gone.id) else {
                continue;
            };
            self.events().deleted(&gone);
            let this = self.clone();
            self.shared.driver.spawn(async move {
                env.deleting.cancel();
                let _op = env.op.lock().await;
                this.shared.driver.stop_locked(&env).await;
                this.shared.envs.close_hub(&env.id, "environment removed");
            });
        }
    }
}
