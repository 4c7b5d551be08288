//! One owner's quota-checked changes, admitted one at a time across the cluster.
//!
//! A host checks a user's limits against the records it has, and each host admits
//! one user's changes one at a time already. Across hosts that is not enough: two
//! hosts checking at once would each count without the other's change and both
//! admit the last one that fits. So a change that must be counted holds the user's
//! key in `PREFIX-admissions` (made with a create, which only one host wins) from
//! before its check until its record is in the records bucket, and the next holder,
//! before it counts, waits until this host has every record change the bucket held
//! when it got the key ([`Cluster::caught_up`](super::Cluster::caught_up)).
//!
//! A key outlives nothing for long: the bucket drops keys [`HELD_AT_MOST`] after
//! they were made, so a host that died holding one holds back that user's changes
//! for at most that long.

use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::time::Instant;

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

/// The user's admission key, held by this host until [`Admission::leave`] (or a
/// drop, which lets it go in the background).
#[derive(Debug)]
pub(crate) struct Admission {
    bucket: kv::Store,
    key: String,
    revision: u64,
    left: bool,
}

impl Admissions {
    pub(super) fn new(bucket: kv::Store, host: String) -> Self {
        Self { bucket, host }
    }

    /// Holds `owner`'s key, once no other host does; [`ClusterError::Busy`] after
    /// [`WAIT`], [`ClusterError::Nats`] when NATS does not answer.
    pub(super) async fn enter(&self, owner: &str) -> Result<Admission, ClusterError> {
        // Hex: user names may hold characters a key may not.
        let key = hex::encode(owner);
        let deadline = Instant::now() + WAIT;
        let mut pause = Duration::from_micros(500);
        loop {
            match self.bucket.create(&key, self.host.clone().into()).await {
                Ok(revision) => {
                    return Ok(Admission {
                        bucket: self.bucket.clone(),
                        key,
                        revision,
                        left: false,
                    });
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(ClusterError::Nats(format!(
                        "admitting a change of {owner}'s: {e}"
                    )));
                }
            }
            if Instant::now() + pause > deadline {
                return Err(ClusterError::Busy(format!(
                    "another host has been admitting a change of {owner}'s for over {} s",
                    WAIT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

impl Admission {
    /// Lets the key go, if this host still holds it (one held past
    /// [`HELD_AT_MOST`] may be another's by now, and is left alone).
    pub(crate) async fn leave(mut self) {
        release(&self.bucket, &self.key, self.revision).await;
        // Only now: given up half-way, the drop lets it go instead.
        self.left = true;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        // A change that failed half-way: the next one need not wait for the age limit.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (bucket, key, revision) = (self.bucket.clone(), self.key.clone(), self.revision);
            runtime.spawn(async move { release(&bucket, &key, revision).await });
        }
    }
}

async fn release(bucket: &kv::Store, key: &str, revision: u64) {
    if let Err(e) = bucket.delete_expect_revision(key, Some(revision)).await {
        tracing::debug!(error = %e, "cluster: letting go of an admission key");
    }
}
