//! The long-lived connections each user holds on this host (`[tenancy]
//! max_connections`): app sockets, `/ws/events` streams and followed logs, each
//! counted by a [`HeldConnection`] taken before it is admitted and given back when it
//! drops, however the connection ends (a close, an error, a revoked token, a deleted
//! environment, a host shutting down). Runtime sockets are the environment's, not a
//! user's, and are never counted. The lifecycle reads the limit in force
//! (`lifecycle/quotas.rs`); the API holds the guard for as long as it serves the
//! connection (`api/ws.rs`, `api/events.rs`, `api/logs.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::MutexExt;

/// Every user's count of connections held on this host, and how many were refused.
#[derive(Debug, Default)]
pub(crate) struct UserConnections {
    /// Users holding at least one; a user whose last one ends is removed.
    held: Mutex<HashMap<String, usize>>,
    refused: AtomicU64,
}

/// A user at their limit: what they hold, and the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AtLimit {
    /// The user's `max_connections`.
    pub limit: usize,
    /// The connections they hold now.
    pub used: usize,
}

impl UserConnections {
    /// Counts one more connection of `user`, unless they hold `limit` already
    /// (`None`: no limit, counted all the same, so a limit put in force by a reload
    /// counts what is open then). The count drops when the guard does.
    pub(crate) fn hold(
        self: &Arc<Self>,
        user: &str,
        limit: Option<usize>,
    ) -> Result<HeldConnection, AtLimit> {
        let mut held = self.held.locked();
        let used = held.get(user).copied().unwrap_or(0);
        if let Some(limit) = limit
            && used >= limit
        {
            drop(held);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AtLimit { limit, used });
        }
        held.insert(user.to_owned(), used + 1);
        Ok(HeldConnection {
            counts: self.clone(),
            user: user.to_owned(),
        })
    }

    /// The connections `user` holds now.
    #[cfg(test)]
    fn held_by(&self, user: &str) -> usize {
        self.held.locked().get(user).copied().unwrap_or(0)
    }

    /// Connections refused since the host started because their user was at the limit.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One connection counted against its user; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct HeldConnection {
    counts: Arc<UserConnections>,
    user: String,
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let mut held = self.counts.held.locked();
        if let Some(n) = held.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_at_the_limit_is_refused_until_one_of_theirs_drops() {
        let counts = Arc::new(UserConnections::default());
        let first = counts.hold("alice", Some(2));
        let second = counts.hold("alice", Some(2));
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(
            counts.hold("alice", Some(2)).err(),
            Some(AtLimit { limit: 2, used: 2 })
        );
        // Another user's count is their own; no limit still counts.
        assert!(counts.hold("bob", Some(2)).is_ok());
        let unlimited: Vec<_> = (0..5).map(|_| counts.hold("carol", None)).collect();
        assert_eq!(counts.held_by("carol"), 5);
        drop(unlimited);
        assert_eq!(counts.held_by("carol"), 0);
        drop(first);
        assert_eq!(counts.held_by("alice"), 1);
        assert!(counts.hold("alice", Some(2)).is_ok());
        assert_eq!(counts.refused(), 1);
        // A limit of 0 admits none.
        assert!(counts.hold("dave", Some(0)).is_err());
        drop(second);
        assert_eq!(counts.held_by("alice"), 0);
        assert!(counts.held.locked().get("alice").is_none());
    }
}
