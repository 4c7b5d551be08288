//! Resources still to remove after a delete, so a host that dies before its
//! provider removed one does not leave it behind for good.
//!
//! Before a delete in a cluster removes the record, the deleting host puts an entry
//! in the removals bucket under the record's key: the deleted record and the host
//! that is to have its provider remove the resource (the one running it, the one
//! that ran it last, or the deleting host itself). That host clears the entry once
//! its provider is done. Every host sweeps the bucket each lease: an entry whose
//! host is no longer alive (or is this host, written before it started: its last
//! run died first), for a record the cluster no longer has, is offered to the
//! lifecycle, which claims it (a compare-and-set naming this host, so one host
//! does it) and has its own provider remove the resource. An entry whose record the
//! cluster still has is a delete that never happened (its host died half-way):
//! once older than [`STALE`] it is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::leases::Leases;
use super::records::key_of;
use super::{ClusterError, ClusterEvent};
use crate::store::{Record, validate};
use crate::sync::MutexExt;

/// How old an entry whose record still exists must be before it counts as stale.
const STALE: time::Duration = time::Duration::minutes(1);
/// How soon an entry offered to the lifecycle, and not claimed, is offered again.
const OFFER_AGAIN: Duration = Duration::from_secs(300);
/// How long writing an entry may take before the delete goes on without it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// An entry's value in the bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Value {
    /// The host that is to remove the resource.
    host: String,
    /// The deleted record.
    record: Record,
}

/// A removal whose host is gone, offered to this host's lifecycle.
#[derive(Debug, Clone)]
pub(crate) struct Abandoned {
    /// The deleted record.
    pub record: Record,
    /// The host it was left to.
    pub host: String,
    revision: u64,
}

#[derive(Debug)]
pub(super) struct Removals {
    bucket: kv::Store,
    host_id: String,
    /// The bucket's last revision when this host started: an entry naming it written
    /// at or before it is one its last run left undone (it died before its provider
    /// was done). A revision, not a time: this host's clock and the NATS server's,
    /// which stamps entries, may disagree.
    started: u64,
    /// By key: the revision last offered to the lifecycle, and when.
    offered: Mutex<HashMap<String, (u64, Instant)>>,
}

impl Removals {
    /// The removals in `bucket`, for host `host_id`, which started when the bucket's
    /// last revision was `started`.
    pub(super) fn new(bucket: kv::Store, host_id: String, started: u64) -> Self {
        Self {
            bucket,
            host_id,
            started,
            offered: Mutex::new(HashMap::new()),
        }
    }

    /// Leaves the removal of `record`'s resource to host `host`.
    pub(super) async fn leave(&self, record: &Record, host: &str) -> Result<(), ClusterError> {
        let value = encode(host, record)?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.bucket.put(key_of(&record.id), value)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ClusterError::Nats(format!("noting a removal: {e}"))),
            Err(_) => Err(ClusterError::Nats("noting a removal: timed out".into())),
        }
    }

    /// Takes `removal` over for this host: `false` when another host did first.
    pub(super) async fn claim(&self, removal: &Abandoned) -> bool {
        let Ok(value) = encode(&self.host_id, &removal.record) else {
            return false;
        };
        let key = key_of(&removal.record.id);
        self.bucket
            .update(&key, value, removal.revision)
            .await
            .is_ok()
    }

    /// The removal of record `id`'s resource is done (or was never needed).
    pub(super) async fn done(&self, id: &str) {
        let key = key_of(id);
        if let Err(e) = self.bucket.delete(&key).await {
            tracing::warn!(env = %id, error = %e, "cluster: could not clear a removal that is done; a host may remove the resource again");
        }
        self.offered.locked().remove(&key);
    }

    /// Every lease (`period`): offers the removals left to hosts that are gone, and
    /// drops stale and malformed entries.
    pub(super) async fn sweeps(
        &self,
        records: kv::Store,
        leases: Arc<Leases>,
        events: mpsc::UnboundedSender<ClusterEvent>,
        period: Duration,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Not at once: the records' first sync has this host remove what it was left
        // of deletes made while it was away (and clear their entries) first.
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep(&records, &leases, &events).await {
                tracing::debug!(error = %e, "cluster: sweeping the removals");
            }
        }
    }

    async fn sweep(
        &self,
        records: &kv::Store,
        leases: &Leases,
        events: &mpsc::UnboundedSender<ClusterEvent>,
    ) -> Result<(), ClusterError> {
        let nats = |e: String| ClusterError::Nats(format!("reading the removals: {e}"));
        let mut keys = self.bucket.keys().await.map_err(|e| nats(e.to_string()))?;
        let mut seen = HashSet::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats(e.to_string()))?;
            seen.insert(key.clone());
            let Some(entry) = self
                .bucket
                .entry(&key)
                .await
                .map_err(|e| nats(e.to_string()))?
            else {
                continue;
            };
            if entry.operation != Operation::Put {
                continue;
            }
            let Some(value) = decode(&entry) else {
                tracing::warn!(%key, "cluster: dropping a malformed removal");
                self.drop_entry(&entry).await;
                continue;
            };
            let left_by_last_run = value.host == self.host_id && entry.revision <= self.started;
            // A host NATS cannot say is gone is not taken for gone: the sweep ends
            // here and the next one asks again.
            if !left_by_last_run && leases.host_alive(&value.host).await? {
                continue;
            }
            let record = records.entry(&key).await.map_err(|e| nats(e.to_string()))?;
            if record.is_some_and(|r| r.operation == Operation::Put) {
                // Aged by the server's clock, which stamped the entry.
                if leases.server_now() - entry.created > STALE {
                    tracing::info!(env = %value.record.id, "cluster: dropping a removal whose record was never deleted");
                    self.drop_entry(&entry).await;
                }
                continue;
            }
            if self.offered_lately(&key, entry.revision) {
                continue;
            }
            let _ = events.send(ClusterEvent::Abandoned(Box::new(Abandoned {
                record: value.record,
                host: value.host,
                revision: entry.revision,
            })));
        }
        self.offered.locked().retain(|key, _| seen.contains(key));
        Ok(())
    }

    /// Whether revision `revision` of `key` was offered within [`OFFER_AGAIN`];
    /// notes it offered now if not.
    fn offered_lately(&self, key: &str, revision: u64) -> bool {
        let mut offered = self.offered.locked();
        if let Some((at_revision, at)) = offered.get(key)
            && *at_revision == revision
            && at.elapsed() < OFFER_AGAIN
        {
            return true;
        }
        offered.insert(key.to_owned(), (revision, Instant::now()));
        false
    }

    async fn drop_entry(&self, entry: &kv::Entry) {
        if let Err(e) = (self.bucket)
            .delete_expect_revision(&entry.key, Some(entry.revision))
            .await
        {
            tracing::debug!(error = %e, "cluster: dropping a removal");
        }
    }
}

fn encode(host: &str, record: &Record) -> Result<bytes::Bytes, ClusterError> {
    let value = Value {
        host: host.to_owned(),
        record: record.clone(),
    };
    serde_json::to_vec(&value)
        .map(Into::into)
        .map_err(|e| ClusterError::Nats(e.to_string()))
}

/// An entry from the bucket, its record checked like a hand-edited one (anyone with
/// access to the NATS account may have written it); `None` for anything malformed.
fn decode(entry: &kv::Entry) -> Option<Value> {
    if entry.value.len() > validate::MAX_RECORD_BYTES + 1024 {
        return None;
    }
    let value: Value = serde_json::from_slice(&entry.value).ok()?;
    let plausible = crate::config::is_host_id(&value.host)
        && validate::check(&value.record).is_ok()
        && key_of(&value.record.id) == entry.key;
    plausible.then_some(value)
}
