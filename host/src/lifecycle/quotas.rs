//! Each user's limits (`[tenancy]`): how many environments they may own and have
//! running. A change that could take a user past one is checked and made while holding
//! that user's admission lock, so concurrent requests cannot both pass a check that
//! only one of them fits (100 parallel creates at a limit of 10 make exactly 10). A
//! user without limits is not admitted one request at a time: nothing is counted for
//! them, and serialising their creates would make each wait for the one before it to
//! be durable (a journal sync each) instead of sharing a sync with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::OwnedMutexGuard;

use super::LifecycleError;
use crate::config::TenancyConfig;
use crate::store::{DesiredState, Store};
use crate::sync::{MutexExt, RwLockExt};

/// The limits, and one admission lock per user.
#[derive(Debug, Default)]
pub(super) struct Quotas {
    /// Swapped by a reload of `tether.toml`.
    config: RwLock<TenancyConfig>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Quotas {
    pub(super) fn new(config: TenancyConfig) -> Self {
        Self {
            config: RwLock::new(config),
            locks: Mutex::default(),
        }
    }

    /// Puts reloaded limits in force for the next check.
    pub(super) fn set(&self, config: TenancyConfig) {
        *self.config.write_locked() = config;
    }

    /// Holds `owner`'s admission until the guard drops: check, then change, then drop.
    /// `None` (nothing held) when `owner` has no limit.
    pub(super) async fn admit(&self, owner: &str) -> Option<OwnedMutexGuard<()>> {
        let quota = self.config.read_locked().quota_of(owner);
        if quota.max_environments.is_none() && quota.max_running.is_none() {
            return None;
        }
        let lock = {
            let mut locks = self.locks.locked();
            // Forget users nobody is admitting right now, so the map stays small.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(owner.to_owned()).or_default().clone()
        };
        Some(lock.lock_owned().await)
    }

    /// `QuotaExceeded` if `owner` may not have one more environment (`running`: one
    /// more running one too).
    pub(super) fn check_new(
        &self,
        store: &Store,
        owner: &str,
        running: bool,
    ) -> Result<(), LifecycleError> {
        let quota = self.config.read_locked().quota_of(owner);
        if let Some(limit) = quota.max_environments {
            let used = store.count(|r| r.owner == owner);
            exceeded("max_environments", owner, limit, used)?;
        }
        if running {
            self.check_running(store, owner, None)?;
        }
        Ok(())
    }

    /// `QuotaExceeded` if `owner` may not have one more running environment besides
    /// `id` (which is not counted: asking a running one to run again is no change).
    pub(super) fn check_running(
        &self,
        store: &Store,
        owner: &str,
        id: Option<&str>,
    ) -> Result<(), LifecycleError> {
        if let Some(limit) = self.config.read_locked().quota_of(owner).max_running {
            let used = store.count(|r| {
                r.owner == owner
                    && r.desired_state == DesiredState::Running
                    && id.is_none_or(|id| r.id != id)
            });
            exceeded("max_running", owner, limit, used)?;
        }
        Ok(())
    }
}

fn exceeded(
    quota: &'static str,
    owner: &str,
    limit: usize,
    used: usize,
) -> Result<(), LifecycleError> {
    if used < limit {
        return Ok(());
    }
    Err(LifecycleError::QuotaExceeded {
        quota,
        owner: owner.to_owned(),
        limit,
        used,
    })
}
