//! The records' sync between this host's store and the cluster's records bucket.
//!
//! One task does both directions, so they never race each other: it watches the
//! bucket and applies other hosts' changes to the local store (and tells the
//! lifecycle), and after each local change in force (`Store::edits`) it writes the
//! records that differ from the bucket as compare-and-sets on the revision it last
//! saw. A set that finds a newer revision reads it, merges field by field
//! ([`merge`]), applies the merge here and tries again. What could not be written
//! (NATS away) is tried again every [`RETRY`] until it is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::merge::{self, Clash};
use super::{Cluster, ClusterError, ClusterEvent, ConflictView};
use crate::store::{Changes, Record, Store, StoreError, validate};

/// How soon writes that failed are tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Changes that land together are written together.
const GATHER: Duration = Duration::from_millis(5);
/// How often a compare-and-set that keeps losing is merged and tried again.
const MAX_ROUNDS: usize = 20;

/// A record as the bucket last had it.
#[derive(Debug, Clone)]
struct Synced {
    revision: u64,
    fields: Map<String, Value>,
}

struct Sync {
    cluster: Cluster,
    store: Arc<Store>,
    events: mpsc::UnboundedSender<ClusterEvent>,
    /// By record id: the bucket's version this host last saw or wrote.
    synced: HashMap<String, Synced>,
    /// The ids whose bucket key was deleted, so a late local copy is not written back.
    deleted: std::collections::HashSet<String>,
}

/// The bucket key of record `id`: the id itself when NATS takes it as one token,
/// else `_` and its hex (ids may hold dots, which NATS reads as separators; no id
/// starts with `_`, so the two kinds never meet).
pub(super) fn key_of(id: &str) -> String {
    if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id.to_owned()
    } else {
        format!("_{}", hex::encode(id))
    }
}

/// The record id a bucket key stands for ([`key_of`] undone); `None` for a key no
/// id makes.
fn id_of_key(key: &str) -> Option<String> {
    let id = match key.strip_prefix('_') {
        Some(hexed) => String::from_utf8(hex::decode(hexed).ok()?).ok()?,
        None => key.to_owned(),
    };
    (key_of(&id) == key).then_some(id)
}

/// Reads the bucket into the store, then keeps both in step in the background.
pub(super) async fn start(
    cluster: Cluster,
    store: Arc<Store>,
    events: mpsc::UnboundedSender<ClusterEvent>,
) -> Result<(), ClusterError> {
    let bucket = cluster.records_bucket().clone();
    // Everything from here on arrives on the watch: the current value of every key
    // first, then each change.
    let watch = bucket
        .watch_all()
        .await
        .map_err(|e| ClusterError::Nats(format!("watching the records: {e}")))?;
    let mut sync = Sync {
        cluster: cluster.clone(),
        store,
        events,
        synced: HashMap::new(),
        deleted: Default::default(),
    };
    sync.initial(&bucket).await?;
    super::until(cluster.closing(), sync.run(watch), "cluster_records");
    Ok(())
}

impl Sync {
    /// At start: the bucket's records replace this host's copies (the cluster is the
    /// truth for any record it has); records only this host has are added to it,
    /// unless the cluster deleted them while this host was away.
    async fn initial(&mut self, bucket: &kv::Store) -> Result<(), ClusterError> {
        let mut keys = bucket
            .keys()
            .await
            .map_err(|e| ClusterError::Nats(format!("listing the records: {e}")))?;
        let mut changes = Changes::default();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ClusterError::Nats(format!("listing the records: {e}")))?;
            let entry = bucket
                .entry(key.clone())
                .await
                .map_err(|e| ClusterError::Nats(format!("reading record {key}: {e}")))?;
            if let Some(entry) = entry {
                self.remote(entry, &mut changes).await;
            }
        }
        self.publish().await;
        self.tell(changes);
        Ok(())
    }

    async fn run(mut self, mut watch: kv::Watch) {
        let mut edits = self.store.edits();
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = false;
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        let mut changes = Changes::default();
                        self.remote(entry, &mut changes).await;
                        self.tell(changes);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cluster: the records watch failed; watching again");
                        watch = self.rewatch().await;
                    }
                    None => {
                        tracing::warn!("cluster: the records watch ended; watching again");
                        watch = self.rewatch().await;
                    }
                },
                changed = edits.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(GATHER).await;
                    edits.borrow_and_update();
                    pending = !self.publish().await;
                }
                _ = retry.tick(), if pending => pending = !self.publish().await,
            }
        }
    }

    /// A new watch of the whole bucket, after NATS came back; tried until it works.
    async fn rewatch(&mut self) -> kv::Watch {
        loop {
            match self.cluster.records_bucket().watch_all().await {
                Ok(watch) => return watch,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot watch the records yet");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    fn tell(&self, changes: Changes) {
        if !changes.is_empty() {
            let _ = self.events.send(ClusterEvent::Records(changes));
        }
    }

    /// Applies a bucket entry (another host's change, or the current value at a
    /// (re)start) to the local store.
    async fn remote(&mut self, entry: kv::Entry, changes: &mut Changes) {
        if self
            .synced
            .get(&entry.key)
            .is_some_and(|s| s.revision >= entry.revision)
        {
            return; // This host's own write, or older than what it has.
        }
        match entry.operation {
            Operation::Delete | Operation::Purge => {
                self.synced.remove(&entry.key);
                self.deleted.insert(entry.key.clone());
                if let Some(record) = id_of_key(&entry.key).and_then(|id| self.store.get(&id)) {
                    match self.store.remove(&record.id).await {
                        Ok(gone) => changes.removed.push(gone),
                        Err(e) => {
                            tracing::warn!(env = %record.id, error = %e, "cluster: a record deleted on another host could not be removed here")
                        }
                    }
                }
            }
            Operation::Put => {
                let record = match parse(&entry) {
                    Ok(record) => record,
                    Err(why) => {
                        tracing::error!(key = %entry.key, revision = entry.revision, %why, "cluster: ignoring an invalid record from the bucket");
                        return;
                    }
                };
                let fields = fields_of(&record);
                self.deleted.remove(&entry.key);
                let base = self.synced.insert(
                    entry.key.clone(),
                    Synced {
                        revision: entry.revision,
                        fields: fields.clone(),
                    },
                );
                self.apply_here(record, base.map(|b| b.fields), changes)
                    .await;
            }
        }
    }

    /// Puts the bucket's `record` in the local store. A local change not written
    /// yet (the local copy differs from `base`, what the bucket had before) is
    /// merged in, and written by the next [`Self::publish`].
    async fn apply_here(
        &mut self,
        record: Record,
        base: Option<Map<String, Value>>,
        changes: &mut Changes,
    ) {
        let id = record.id.clone();
        let Some(local) = self.store.get(&id) else {
            match self.store.insert(record).await {
                Ok(()) => changes.added.push(id),
                Err(e @ StoreError::NameTaken(_)) => {
                    tracing::error!(env = %id, error = %e, "cluster: another host made an environment with a name this host has; it is not applied here until one is renamed")
                }
                Err(e) => {
                    tracing::warn!(env = %id, error = %e, "cluster: a record from another host could not be stored here")
                }
            }
            return;
        };
        let local_fields = fields_of(&local);
        let theirs = fields_of(&record);
        if local_fields == theirs {
            return;
        }
        let merged = match base {
            Some(base) if local_fields != base => {
                let (merged, clashes) = merge::merge(&base, &local_fields, &theirs);
                self.report(&id, clashes);
                match parse_fields(merged) {
                    Ok(r) => r,
                    Err(_) => record,
                }
            }
            _ => record,
        };
        match self.store.replace(merged).await {
            Ok(before) => changes.changed.push(before),
            Err(e) => {
                tracing::warn!(env = %id, error = %e, "cluster: a change from another host could not be stored here")
            }
        }
    }

    /// Writes every local record that differs from the bucket; `false` when some
    /// could not be written (they are tried again).
    async fn publish(&mut self) -> bool {
        let mut all_written = true;
        let local = self.store.list();
        let mut seen = std::collections::HashSet::with_capacity(local.len());
        for record in local {
            let key = key_of(&record.id);
            seen.insert(key.clone());
            if self.store.held_reason(&record.id).is_some() {
                continue;
            }
            let fields = fields_of(&record);
            if self.synced.get(&key).is_some_and(|s| s.fields == fields) {
                continue;
            }
            if self.deleted.contains(&key) {
                continue; // Removed from the store by the watch shortly.
            }
            if let Err(e) = self.write(&record.id, &key, fields.clone()).await {
                tracing::warn!(env = %record.id, error = %e, "cluster: writing a record failed; trying again");
                all_written = false;
                continue;
            }
            // What was written may hold other hosts' changes merged in (or the lease
            // holder's fields put back): the local copy takes them.
            if let Some(written) = self.synced.get(&key).map(|s| s.fields.clone())
                && written != fields
            {
                self.settle_here(&record.id, &fields, &written).await;
            }
        }
        let gone: Vec<String> = (self.synced.keys())
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            match self.cluster.records_bucket().delete(&key).await {
                Ok(()) => {
                    self.synced.remove(&key);
                    self.deleted.insert(key);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cluster: deleting a record failed; trying again");
                    all_written = false;
                }
            }
        }
        all_written
    }

    /// Compare-and-set of one record, merging with newer revisions until it lands.
    async fn write(
        &mut self,
        id: &str,
        key: &str,
        mut mine: Map<String, Value>,
    ) -> Result<(), ClusterError> {
        let bucket = self.cluster.records_bucket().clone();
        for _ in 0..MAX_ROUNDS {
            let base = self.synced.get(key).cloned();
            if let Some(base) = &base
                && !self.cluster.holds(id)
                && merge::fence(&mut mine, &base.fields)
            {
                tracing::warn!(env = %id, "cluster: this host does not hold the lease; its changes to the instance's fields are not written");
            }
            let bytes = serde_json::to_vec(&mine)
                .map_err(|e| ClusterError::Nats(format!("encoding record: {e}")))?;
            let written = match &base {
                Some(base) => bucket
                    .update(key, bytes.into(), base.revision)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => bucket.create(key, bytes.into()).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(revision) => {
                    self.synced.insert(
                        key.to_owned(),
                        Synced {
                            revision,
                            fields: mine.clone(),
                        },
                    );
                    return Ok(());
                }
                Err((false, reason)) => return Err(ClusterError::Nats(reason)),
                Err((true, _)) => {}
            }
            // Someone wrote first: read theirs, merge, try again on top of it.
            let entry = bucket
                .entry(key)
                .await
                .map_err(|e| ClusterError::Nats(e.to_string()))?;
            let Some(entry) = entry else { continue };
            if matches!(entry.operation, Operation::Delete | Operation::Purge) {
                // Deleted on another host meanwhile: the delete wins.
                tracing::warn!(env = %id, "cluster: the record was deleted on another host while this host changed it; the delete is in force");
                let mut changes = Changes::default();
                self.remote(entry, &mut changes).await;
                self.tell(changes);
                return Ok(());
            }
            let theirs = parse(&entry)
                .map(|r| fields_of(&r))
                .map_err(ClusterError::Nats)?;
            let base_fields = base.map(|b| b.fields).unwrap_or_default();
            let (merged, clashes) = merge::merge(&base_fields, &mine, &theirs);
            self.report(id, clashes);
            self.synced.insert(
                key.to_owned(),
                Synced {
                    revision: entry.revision,
                    fields: theirs,
                },
            );
            mine = merged;
        }
        Err(ClusterError::Nats(format!(
            "record {id} kept changing on other hosts during {MAX_ROUNDS} attempts"
        )))
    }

    /// Puts `written` — the bucket's record after this host wrote `sent` — into the
    /// local store. A local change made since `sent` was read is laid over it, and
    /// written by the next publish.
    async fn settle_here(&self, id: &str, sent: &Map<String, Value>, written: &Map<String, Value>) {
        let Some(now) = fields_of_id(&self.store, id) else {
            return;
        };
        let fields = if &now == sent {
            written.clone()
        } else {
            merge::merge(sent, &now, written).0
        };
        match parse_fields(fields) {
            Ok(record) => match self.store.replace(record).await {
                Ok(before) => self.tell(Changes {
                    changed: vec![before],
                    ..Changes::default()
                }),
                Err(e) => {
                    tracing::warn!(env = %id, error = %e, "cluster: storing a merged record failed")
                }
            },
            Err(e) => {
                tracing::warn!(env = %id, error = %e, "cluster: a merged record is invalid; keeping this host's")
            }
        }
    }

    fn report(&self, id: &str, clashes: Vec<Clash>) {
        for clash in clashes {
            self.cluster.conflict(ConflictView {
                environment_id: id.to_owned(),
                field: clash.field,
                lost: clash.lost,
                kept: clash.kept,
                at: crate::store::now(),
            });
        }
    }
}

fn fields_of(record: &Record) -> Map<String, Value> {
    match serde_json::to_value(record) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

fn fields_of_id(store: &Store, id: &str) -> Option<Map<String, Value>> {
    store.peek(id, fields_of)
}

fn parse_fields(fields: Map<String, Value>) -> Result<Record, String> {
    let record: Record =
        serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())?;
    validate::check(&record)?;
    Ok(record)
}

/// A record from the bucket, checked like a hand-edited one: another host, or
/// anyone with access to the NATS account, wrote it.
fn parse(entry: &kv::Entry) -> Result<Record, String> {
    if entry.value.len() > validate::MAX_RECORD_BYTES {
        return Err(format!("{} bytes is too large", entry.value.len()));
    }
    let record: Record = serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
    validate::check(&record)?;
    if key_of(&record.id) != entry.key {
        return Err("its id does not match its key".into());
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_nats_cannot_take_as_a_key_are_hex_encoded() {
        assert_eq!(key_of("0f9a-b_c"), "0f9a-b_c");
        assert_eq!(key_of("a.b"), format!("_{}", hex::encode("a.b")));
        assert_ne!(key_of("a.b"), key_of("a_b"));
        for id in ["0f9a-b_c", "a.b", "x.y.z"] {
            assert_eq!(id_of_key(&key_of(id)).as_deref(), Some(id));
        }
        assert_eq!(id_of_key("_zz"), None);
    }
}
