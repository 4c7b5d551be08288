//! One owner's quota-checked changes, admitted one at a time across the cluster.
//!
//! A host checks a user's limits against the records it has, and each host admits
//! one user's changes one at a time already. Across hosts that is not enough: two
//! hosts checking at once would each count without the other's change and both
//! admit the last one that fits. So a change that must be counted holds the user's
//! key in `PREFIX-admissions` (made with a create, which only one host wins) from
//! before its check until its record is in the records bucket; the next holder,
//! before it counts, waits until its own host has every record change the bucket
//! held when it got the key ([`Cluster::admit`](super::Cluster::admit)).
//!
//! A key does not outlive its holder for long: the bucket drops keys [`HELD_AT_MOST`] after
//! they were made, so a host that died holding one holds back that user's changes
//! for at most that long.

use std::time::Duration;

use async_nats::jetstream::kv;

use super::ClusterError;

/// How long a held key lasts at most (the bucket's age limit).
pub(super) const HELD_AT_MOST: Duration = Duration::from_secs(10);
/// How long a change waits for another host to let the user's key go.
const WAIT: Duration = Duration::from_secs(5);
/// The longest pause between two tries for a key. Short: the key is held for a
/// few milliseconds, and each host has at most one change of a user trying at a
/// time (the others wait for this host's own lock first).
const MAX_PAUSE: Duration = Duration::from_millis(2);

/// The users' admission keys.
#[derive(Debug)]
pub(super) struct Admissions {
    bucket: kv::Store,
    host: String,
}

/// The user's admission key, held by this host until this is dropped; then let go
/// in the background (the answer to the change does not wait for NATS).
#[derive(Debug)]
pub(crate) struct Admission {
    bucket: kv::Store,
    key: String,
    revision: u64,
}

impl Admissions {
    pub(super) fn new(bucket: kv::Store, host: String) -> Self {
        Self { bucket, host }
    }

    /// Holds `owner`'s key, once no other host does; [`ClusterError::Busy`] after
    /// [`WAIT`] (a request to a NATS that went away included), [`ClusterError::Nats`]
    /// when NATS refuses.
    pub(super) async fn enter(&self, owner: &str) -> Result<Admission, ClusterError> {
        match tokio::time::timeout(WAIT, self.take(owner)).await {
            Ok(taken) => taken,
            Err(_) => Err(ClusterError::Busy(format!(
                "another host has been admitting a change of {owner}'s for over {} s, or NATS does not answer",
                WAIT.as_secs()
            ))),
        }
    }

    /// Tries for `owner`'s key until it is this host's.
    async fn take(&self, owner: &str) -> Result<Admission, ClusterError> {
        // Hex: user names may hold characters a key may not.
        let key = hex::encode(owner);
        let mut pause = Duration::from_micros(500);
        loop {
            match self.bucket.create(&key, self.host.clone().into()).await {
                Ok(revision) => {
                    let bucket = self.bucket.clone();
                    return Ok(Admission {
                        bucket,
                        key,
                        revision,
                    });
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    let why = format!("admitting a change of {owner}'s: {e}");
                    return Err(ClusterError::Nats(why));
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

impl Drop for Admission {
    /// Lets the key go if this host still holds it (one held past [`HELD_AT_MOST`]
    /// may be another's by now, and is left alone).
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (bucket, key, revision) = (self.bucket.clone(), self.key.clone(), self.revision);
            runtime.spawn(async move {
                if let Err(e) = bucket.delete_expect_revision(&key, Some(revision)).await {
                    tracing::debug!(error = %e, "cluster: letting go of an admission key");
                }
            });
        }
    }
}
