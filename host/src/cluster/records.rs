//! The records' sync between this host's store and the cluster's records bucket.
//!
//! One task does both directions, so they never race each other: it watches the
//! bucket and applies other hosts' changes to the local store (and tells the
//! lifecycle), and after each local change in force (`Store::edits`) it writes the
//! records that changed (`Store::take_followed`) and differ from the bucket as
//! compare-and-sets on the revision it last saw, a batch's sets all in flight at
//! once. A set that finds a newer revision reads it, merges field by field
//! ([`merge`]), applies the merge here and tries again. What could not be written
//! (NATS away) is tried again every [`RETRY`] until it is. Which revision of each
//! record this host last synced is kept on disk ([`remembered`](super::remembered)),
//! so edits made to the file while the host was stopped are not undone at start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures_util::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::merge::{self, Clash};
use super::remembered::Remembered;
use super::{Cluster, ClusterError, ClusterEvent, ConflictView};
use crate::store::{Changes, Record, Store, StoreError, validate};

/// How soon writes that failed are tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Changes that land together are written together.
const GATHER: Duration = Duration::from_millis(5);
/// How often a compare-and-set that keeps losing is merged and tried again.
const MAX_ROUNDS: usize = 20;
/// Compare-and-sets (or reads, or store writes) of one batch in flight at once.
const IN_FLIGHT: usize = 64;
/// The most bucket entries applied to the local store together.
const MAX_BATCH: usize = 1024;
/// How often the revisions last synced are saved, while they change.
const REMEMBER: Duration = Duration::from_secs(5);

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
    deleted: HashSet<String>,
    /// The ids of records whose last write failed, to be tried again.
    unwritten: HashSet<String>,
    /// The keys whose last bucket entry could not be applied to the local store.
    unapplied: HashSet<String>,
    /// Of those, the records another host made that are held back because a record
    /// here has their name, by key: stored once that name is free here.
    held_back: HashMap<String, Record>,
    /// The keys whose last bucket entry is not a valid record, with why: the last
    /// good copy stays in force, and the next change made here is written over it.
    invalid: BTreeMap<String, String>,
    /// Where the revisions last synced are kept between runs.
    remembered: Remembered,
    /// Whether `synced` changed since it was last saved.
    unsaved: bool,
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
pub(super) fn id_of_key(key: &str) -> Option<String> {
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
    let made = (bucket.status().await)
        .map_err(|e| ClusterError::Nats(format!("reading the records bucket: {e}")))?
        .info
        .created
        .unix_timestamp_nanos();
    let mut sync = Sync {
        cluster: cluster.clone(),
        remembered: Remembered::beside(store.path(), made.to_string()),
        store,
        events,
        synced: HashMap::new(),
        deleted: Default::default(),
        unwritten: Default::default(),
        unapplied: Default::default(),
        held_back: HashMap::new(),
        invalid: BTreeMap::new(),
        unsaved: false,
    };
    // From here on the store keeps what changes; everything it has counts as changed
    // for the first publish.
    sync.store.follow();
    sync.initial(&bucket).await?;
    let closing = cluster.closing().clone();
    tokio::spawn(
        sync.run(watch, closing)
            .instrument(tracing::info_span!("cluster", task = "cluster_records")),
    );
    Ok(())
}

impl Sync {
    /// At start: a record the bucket still has at the revision this host last synced
    /// is this host's to say about: changed in the file while the host was stopped,
    /// the change is written to the cluster; removed from it, the record is deleted
    /// from the cluster. Any other record of the bucket replaces this host's copy
    /// (the cluster is the truth for a record another host changed since). Records
    /// only this host has are added to it, unless the cluster deleted them while
    /// this host was away: then the delete is applied here (and this host's provider
    /// removes the resource if it ran the environment last). A create would bring
    /// such a record back, since a key whose last entry is a delete can be created
    /// again.
    async fn initial(&mut self, bucket: &kv::Store) -> Result<(), ClusterError> {
        let mut keys = bucket
            .keys()
            .await
            .map_err(|e| ClusterError::Nats(format!("listing the records: {e}")))?;
        let mut all = Vec::new();
        while let Some(key) = keys.next().await {
            all.push(key.map_err(|e| ClusterError::Nats(format!("listing the records: {e}")))?);
        }
        let mut changes = Changes::default();
        let remembered = self.remembered.load();
        for keys in all.chunks(MAX_BATCH) {
            let entries = entries(bucket, keys).await?;
            let entries = self.unchanged_since_last_run(entries, &remembered);
            self.remote_batch(entries, &mut changes).await;
        }
        let listed: HashSet<&String> = all.iter().collect();
        let only_here: Vec<String> = (self.store.select(|r| Some(key_of(&r.id))))
            .into_iter()
            .filter(|key| !listed.contains(key))
            .collect();
        let deletes: Vec<kv::Entry> = (entries(bucket, &only_here).await?)
            .into_iter()
            .filter(|e| matches!(e.operation, Operation::Delete | Operation::Purge))
            .collect();
        self.remote_batch(deletes, &mut changes).await;
        // Records only this host has (and were not deleted) go to the bucket.
        self.unwritten
            .extend(self.store.select(|r| Some(r.id.clone())));
        self.publish().await;
        self.tell(changes);
        self.remember().await;
        Ok(())
    }

    /// `entries` less those still at the revision this host last synced: those are
    /// taken as this host's bookkeeping, not applied, so the local file's copy (or
    /// its absence) stands and the first publish writes it. An absence counts only
    /// when the store read a valid file that does not hold the record at all.
    fn unchanged_since_last_run(
        &mut self,
        entries: Vec<kv::Entry>,
        remembered: &HashMap<String, u64>,
    ) -> Vec<kv::Entry> {
        let absence_counts = self.store.found_at_open() && self.store.invalid().is_none();
        let mut rest = Vec::with_capacity(entries.len());
        for entry in entries {
            let unchanged = entry.operation == Operation::Put
                && remembered.get(&entry.key) == Some(&entry.revision);
            let record = match unchanged.then(|| parse(&entry)) {
                Some(Ok(record)) => record,
                _ => {
                    rest.push(entry);
                    continue;
                }
            };
            if self.store.get(&record.id).is_none() {
                if !absence_counts || self.store.held_reason(&record.id).is_some() {
                    rest.push(entry);
                    continue;
                }
                tracing::warn!(env = %record.id, name = %record.name, "cluster: the record was removed from the records file while this host was stopped; deleting it from the cluster");
                self.unwritten.insert(record.id.clone());
            }
            self.synced.insert(
                entry.key,
                Synced {
                    revision: entry.revision,
                    fields: fields_of(&record),
                },
            );
        }
        rest
    }

    /// Saves the revision of each record as the local store has it.
    async fn remember(&mut self) {
        let revisions = self.revisions_to_save();
        self.remembered.save(revisions).await;
    }

    /// The revisions to save: those of the records the local store has as synced.
    fn revisions_to_save(&mut self) -> BTreeMap<String, u64> {
        self.unsaved = false;
        (self.synced.iter())
            .filter(|(key, _)| !self.unapplied.contains(*key))
            .filter(|(key, _)| {
                id_of_key(key).is_some_and(|id| self.store.peek(&id, |_| ()).is_some())
            })
            .map(|(key, synced)| (key.clone(), synced.revision))
            .collect()
    }

    async fn run(mut self, mut watch: kv::Watch, closing: CancellationToken) {
        let mut edits = self.store.edits();
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut remember = tokio::time::interval(REMEMBER);
        remember.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = false;
        let mut edit = 0;
        loop {
            // Each arm runs to its end before the next is chosen: `synced` is saved
            // only between steps, when what it names is in the store.
            tokio::select! {
                _ = closing.cancelled() => {
                    if self.unsaved {
                        let revisions = self.revisions_to_save();
                        self.remembered.save_now(revisions);
                    }
                    return;
                }
                _ = remember.tick(), if self.unsaved => self.remember().await,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        // What else has arrived is applied with it.
                        let mut batch = vec![entry];
                        let mut broken = None;
                        while batch.len() < MAX_BATCH {
                            match watch.next().now_or_never() {
                                Some(Some(Ok(entry))) => batch.push(entry),
                                Some(Some(Err(e))) => {
                                    broken = Some(e.to_string());
                                    break;
                                }
                                Some(None) => {
                                    broken = Some("it ended".into());
                                    break;
                                }
                                None => break,
                            }
                        }
                        let newest = batch.iter().map(|e| e.revision).max().unwrap_or(0);
                        let mut changes = Changes::default();
                        self.remote_batch(batch, &mut changes).await;
                        self.tell(changes);
                        self.cluster.inner.applied.send_if_modified(|applied| {
                            let later = newest > *applied;
                            *applied = (*applied).max(newest);
                            later
                        });
                        if let Some(why) = broken {
                            tracing::warn!(%why, "cluster: the records watch failed; watching again");
                            watch = self.rewatch().await;
                        }
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
                    // Someone waiting for the change to be shared cuts the gathering
                    // short (`Cluster::written`).
                    tokio::select! {
                        _ = tokio::time::sleep(GATHER) => {}
                        _ = self.cluster.inner.hurry.notified() => {}
                    }
                    // Every edit up to this count is among the changes taken next.
                    edit = *edits.borrow_and_update();
                    pending = !self.publish().await;
                    self.unsaved = true;
                    self.written(pending, edit);
                    // A record renamed or deleted here may have freed a held-back name.
                    let mut changes = Changes::default();
                    self.retry_held_back(&mut changes).await;
                    self.tell(changes);
                }
                _ = retry.tick(), if pending => {
                    pending = !self.publish().await;
                    self.unsaved = true;
                    self.written(pending, edit);
                }
            }
        }
    }

    /// Tells those waiting for the store's edits up to `edit` to be in the bucket
    /// ([`Cluster::written`]) that they are, unless some are still `pending`.
    fn written(&self, pending: bool, edit: u64) {
        if !pending {
            self.cluster.inner.written.send_if_modified(|written| {
                let later = edit > *written;
                *written = (*written).max(edit);
                later
            });
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
        self.remote_batch(vec![entry], changes).await;
    }

    /// Applies bucket entries to the local store: the bookkeeping one after another,
    /// the store's writes all at once, so they share the journal's syncs. Only the
    /// newest entry of each key counts.
    async fn remote_batch(&mut self, entries: Vec<kv::Entry>, changes: &mut Changes) {
        let mut newest: HashMap<String, kv::Entry> = HashMap::with_capacity(entries.len());
        for entry in entries {
            match newest.get(&entry.key) {
                Some(seen) if seen.revision >= entry.revision => {}
                _ => {
                    newest.insert(entry.key.clone(), entry);
                }
            }
        }
        let plans: Vec<(String, Apply)> = newest
            .into_values()
            .filter_map(|entry| {
                let key = entry.key.clone();
                // A newer entry there: any clash of its name is told again by its apply.
                self.cluster.name_clash(&key, None);
                self.held_back.remove(&key);
                let plan = self.plan(entry)?;
                self.unapplied.remove(&key);
                Some((key, plan))
            })
            .collect();
        let store = &self.store;
        let done: Vec<(String, Result<Applied, Unapplied>)> = futures_util::stream::iter(plans)
            .map(|(key, plan)| async move { (key, plan.run(store).await) })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        // One entry per record: nothing to reconcile between them.
        for (key, one) in done {
            self.applied(key, one, changes);
        }
        self.unsaved = true;
        self.retry_held_back(changes).await;
    }

    /// Notes what applying the bucket's entry under `key` did.
    fn applied(&mut self, key: String, one: Result<Applied, Unapplied>, changes: &mut Changes) {
        let (one, clashes) = match one {
            Ok(one) => {
                self.cluster.name_clash(&key, None);
                self.unapplied.remove(&key);
                one
            }
            Err(Unapplied::NameTaken { clash, record }) => {
                self.cluster.name_clash(&key, Some(clash));
                self.held_back.insert(key.clone(), *record);
                self.unapplied.insert(key);
                return;
            }
            Err(Unapplied::Failed) => {
                self.unapplied.insert(key);
                return;
            }
        };
        if let Some(id) = id_of_key(&key) {
            self.report(&id, clashes);
        }
        changes.added.extend(one.added);
        changes.changed.extend(one.changed);
        changes.removed.extend(one.removed);
    }

    /// Stores the records held back for a name clash whose name is free here now
    /// (the record that had it was renamed or deleted, here or on another host).
    async fn retry_held_back(&mut self, changes: &mut Changes) {
        if self.held_back.is_empty() {
            return;
        }
        let names: HashSet<String> = self
            .store
            .select(|r| Some(r.name.clone()))
            .into_iter()
            .collect();
        let free: Vec<String> = (self.held_back.iter())
            .filter(|(_, record)| !names.contains(&record.name))
            .map(|(key, _)| key.clone())
            .collect();
        for key in free {
            let Some(record) = self.held_back.remove(&key) else {
                continue;
            };
            tracing::info!(env = %record.id, name = %record.name, "cluster: the name of a record held back is free here now; storing it");
            let one = Apply::Insert(record).run(&self.store).await;
            self.applied(key, one, changes);
            self.unsaved = true;
        }
    }

    /// What a bucket entry asks of the local store, its bookkeeping done; `None`
    /// for this host's own write, an older one, or an invalid record.
    fn plan(&mut self, entry: kv::Entry) -> Option<Apply> {
        if self
            .synced
            .get(&entry.key)
            .is_some_and(|s| s.revision >= entry.revision)
        {
            return None; // This host's own write, or older than what it has.
        }
        match entry.operation {
            Operation::Delete | Operation::Purge => {
                self.valid_again(&entry.key);
                self.synced.remove(&entry.key);
                self.deleted.insert(entry.key.clone());
                let id = id_of_key(&entry.key)?;
                self.store.get(&id).is_some().then_some(Apply::Remove(id))
            }
            Operation::Put => {
                let record = match parse(&entry) {
                    Ok(record) => record,
                    Err(why) => {
                        self.spoilt(&entry, why);
                        return None;
                    }
                };
                self.valid_again(&entry.key);
                let fields = fields_of(&record);
                if let (Some(base), Some(here)) = (
                    self.synced.get(&entry.key),
                    fields_of_id(&self.store, &record.id),
                ) {
                    let revision = entry.revision;
                    self.contest_if_changed(&record.id, revision, &base.fields, &here, &fields);
                }
                self.deleted.remove(&entry.key);
                let base = self.synced.insert(
                    entry.key.clone(),
                    Synced {
                        revision: entry.revision,
                        fields,
                    },
                );
                self.plan_here(record, base.map(|b| b.fields))
            }
        }
    }

    /// The bucket's `entry` is not a valid record, for `why`: logged and named in
    /// `/healthz` (its key and why, never its text), and ignored. The last good copy
    /// (the bucket's before, else this host's own) stays in force here, taken as at
    /// the bad entry's revision: a change made here later is a compare-and-set on top
    /// of the bad entry, which replaces it; until then nothing is written over it.
    fn spoilt(&mut self, entry: &kv::Entry, why: String) {
        let key = &entry.key;
        tracing::error!(%key, revision = entry.revision, %why, "cluster: ignoring an invalid record from the bucket; the last good copy stays in force until a valid record is written there or the environment is changed through the API");
        let last_good = (self.synced.get(key).map(|s| s.fields.clone()))
            .or_else(|| id_of_key(key).and_then(|id| fields_of_id(&self.store, &id)));
        if let Some(fields) = last_good {
            let revision = entry.revision;
            self.synced.insert(key.clone(), Synced { revision, fields });
        }
        self.invalid.insert(key.clone(), why);
        self.cluster.invalid_records(&self.invalid);
    }

    /// `theirs`, the bucket's newer record `id` (at `revision`) after `base`, changed
    /// an instance's field that this host (whose copy is `here`) did not: if this host
    /// runs the environment and took its lease before that revision was written, only
    /// its own writes change those, so someone else did (by hand, or a host's bug).
    /// Its lease is taken for contested ([`Cluster::contested`]), never the fields
    /// adopted by the instance running here.
    fn contest_if_changed(
        &self,
        id: &str,
        revision: u64,
        base: &Map<String, Value>,
        here: &Map<String, Value>,
        theirs: &Map<String, Value>,
    ) {
        if !self.cluster.under_lease(id, revision) {
            return;
        }
        let changed = merge::owner_fields_changed(base, here, theirs);
        if !changed.is_empty() {
            tracing::error!(env = %id, fields = ?changed, "cluster: someone other than this host changed the instance's fields of an environment it runs in the records bucket; taking its lease for contested: the instance here is stopped, and started again afresh (with a new runtime token)");
            self.cluster.contested(id);
        }
    }

    /// The bucket holds a valid record under `key` again (or none).
    fn valid_again(&mut self, key: &str) {
        if self.invalid.remove(key).is_some() {
            tracing::info!(%key, "cluster: the records bucket holds a valid record under this key again");
            self.cluster.invalid_records(&self.invalid);
        }
    }

    /// How the bucket's `record` goes into the local store. A local change not
    /// written yet (the local copy differs from `base`, what the bucket had before)
    /// is merged in when the change is made, and written by the next [`Self::publish`].
    fn plan_here(&self, record: Record, base: Option<Map<String, Value>>) -> Option<Apply> {
        let Some(local_fields) = fields_of_id(&self.store, &record.id) else {
            return Some(Apply::Insert(record));
        };
        if local_fields == fields_of(&record) {
            return None;
        }
        Some(Apply::Merge {
            theirs: record,
            base,
        })
    }

    /// Writes the records that changed here since the last publish (and those whose
    /// write failed before) where they differ from the bucket, and deletes the keys
    /// of those that went; `false` when some could not be written (they are tried
    /// again). The first compare-and-set of each record is sent with the others at
    /// once; one that finds a newer revision is merged and written on its own.
    async fn publish(&mut self) -> bool {
        let mut ids = self.store.take_followed();
        ids.extend(self.unwritten.drain());
        let mut sets = Vec::new();
        let mut gone = Vec::new();
        for id in ids {
            let key = key_of(&id);
            let Some(record) = self.store.get(&id) else {
                if self.synced.contains_key(&key) {
                    gone.push((id, key));
                }
                continue;
            };
            if self.store.held_reason(&id).is_some() || self.deleted.contains(&key) {
                continue; // Held back here, or removed from the store by the watch shortly.
            }
            let fields = fields_of(&record);
            if self.synced.get(&key).is_some_and(|s| s.fields == fields) {
                continue;
            }
            sets.push((id, key, fields));
        }
        let bucket = self.cluster.records_bucket().clone();
        let mut first = Vec::with_capacity(sets.len());
        for (id, key, fields) in sets {
            let (sent, bytes) = match self.fenced(&id, &key, fields.clone()) {
                Ok(prepared) => prepared,
                Err(e) => {
                    tracing::warn!(env = %id, error = %e, "cluster: a record cannot be encoded");
                    continue;
                }
            };
            let base = self.synced.get(&key).map(|s| s.revision);
            let bucket = bucket.clone();
            first.push(async move {
                let outcome = cas(&bucket, &key, bytes, base).await;
                (id, key, fields, sent, outcome)
            });
        }
        let outcomes: Vec<_> = futures_util::stream::iter(first)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut failed = None;
        for (id, key, fields, sent, outcome) in outcomes {
            let written = match outcome {
                Ok(revision) => {
                    self.valid_again(&key);
                    self.synced.insert(
                        key.clone(),
                        Synced {
                            revision,
                            fields: sent,
                        },
                    );
                    Ok(())
                }
                // Another host wrote first: merged and written on its own.
                Err(Cas::Lost) => self.write(&id, &key, fields.clone()).await,
                Err(Cas::Failed(reason)) => Err(ClusterError::Nats(reason)),
            };
            if let Err(e) = written {
                tracing::warn!(env = %id, error = %e, "cluster: writing a record failed; trying again");
                failed = Some(e.to_string());
                self.unwritten.insert(id);
                continue;
            }
            // What was written may hold other hosts' changes merged in (or the lease
            // holder's fields put back): the local copy takes them.
            if let Some(written) = self.synced.get(&key).map(|s| s.fields.clone())
                && written != fields
            {
                self.settle_here(&id, &fields, &written).await;
            }
        }
        for (id, key) in gone {
            match self.cluster.records_bucket().delete(&key).await {
                Ok(()) => {
                    self.valid_again(&key);
                    self.synced.remove(&key);
                    self.deleted.insert(key);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cluster: deleting a record failed; trying again");
                    failed = Some(e.to_string());
                    self.unwritten.insert(id);
                }
            }
        }
        self.cluster
            .unshared("record", self.unwritten.len(), failed);
        self.unwritten.is_empty()
    }

    /// `mine` as this host may write it over the bucket's copy (a host that does not
    /// hold the lease keeps the instance's fields as they are: fencing), and encoded.
    fn fenced(
        &self,
        id: &str,
        key: &str,
        mut mine: Map<String, Value>,
    ) -> Result<(Map<String, Value>, bytes::Bytes), ClusterError> {
        if let Some(base) = self.synced.get(key)
            && !self.cluster.holds(id)
            && merge::fence(&mut mine, &base.fields)
        {
            tracing::warn!(env = %id, "cluster: this host does not hold the lease; its changes to the instance's fields are not written");
        }
        let bytes = serde_json::to_vec(&mine)
            .map_err(|e| ClusterError::Nats(format!("encoding record: {e}")))?;
        Ok((mine, bytes.into()))
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
            let (sent, bytes) = self.fenced(id, key, mine)?;
            mine = sent;
            match cas(&bucket, key, bytes, base.as_ref().map(|b| b.revision)).await {
                Ok(revision) => {
                    self.valid_again(key);
                    self.synced.insert(
                        key.to_owned(),
                        Synced {
                            revision,
                            fields: mine,
                        },
                    );
                    return Ok(());
                }
                Err(Cas::Failed(reason)) => return Err(ClusterError::Nats(reason)),
                Err(Cas::Lost) => {}
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
            let theirs = match parse(&entry) {
                Ok(record) => fields_of(&record),
                Err(why) => {
                    // Nothing to merge with: this host's copy is written over it.
                    self.spoilt(&entry, why);
                    continue;
                }
            };
            let base_fields = base.map(|b| b.fields).unwrap_or_default();
            self.contest_if_changed(id, entry.revision, &base_fields, &mine, &theirs);
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
    /// local store. A local change made since `sent` was read (up to the moment the
    /// store takes this one) is laid over it, and written by the next publish.
    async fn settle_here(&self, id: &str, sent: &Map<String, Value>, written: &Map<String, Value>) {
        let mut invalid = None;
        let settled = self.store.replace_with(id, |now| {
            let now_fields = fields_of(now);
            let fields = if &now_fields == sent {
                written.clone()
            } else {
                merge::merge(sent, &now_fields, written).0
            };
            parse_fields(fields).unwrap_or_else(|e| {
                invalid = Some(e);
                now.clone()
            })
        });
        match settled.await {
            Ok(before) if invalid.is_none() => self.tell(Changes {
                changed: vec![before],
                ..Changes::default()
            }),
            Ok(_) => {
                let e = invalid.unwrap_or_default();
                tracing::warn!(env = %id, error = %e, "cluster: a merged record is invalid; keeping this host's")
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(env = %id, error = %e, "cluster: storing a merged record failed")
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

/// Why a bucket entry was not applied to the local store.
#[derive(Debug)]
enum Unapplied {
    /// Another record here has its record's name: held back until it is free.
    NameTaken {
        clash: NameClash,
        record: Box<Record>,
    },
    /// Anything else (logged where it happened).
    Failed,
}

/// A record from the bucket not applied here because another record has its name.
#[derive(Debug, Clone)]
pub(super) struct NameClash {
    /// The name.
    pub name: String,
    /// The id of the record that holds it here.
    pub holder: String,
}

/// What an [`Apply`] changed in the local store, and the fields where another
/// host's value lost to this host's.
type Applied = (Changes, Vec<Clash>);

/// A change from the bucket for the local store.
enum Apply {
    /// A record this host does not have.
    Insert(Record),
    /// A record this host has, changed on another host to `theirs` from `base` (what
    /// the bucket had before, as far as this host knows).
    Merge {
        theirs: Record,
        base: Option<Map<String, Value>>,
    },
    /// A record deleted on another host.
    Remove(String),
}

impl Apply {
    /// Makes the change in `store`; what changed there and the fields where another
    /// host's value lost to this host's. `Err` when it could not, and why.
    async fn run(self, store: &Store) -> Result<Applied, Unapplied> {
        let mut changes = Changes::default();
        let mut clashes = Vec::new();
        match self {
            Apply::Insert(record) => {
                let id = record.id.clone();
                let name = record.name.clone();
                match store.insert(record.clone()).await {
                    Ok(()) => changes.added.push(id),
                    Err(e @ StoreError::NameTaken(_)) => {
                        tracing::error!(env = %id, error = %e, "cluster: another host made an environment with a name this host has; it is not applied here until that name is free here (the other renamed or deleted)");
                        let holder = store.select(|r| (r.name == name).then(|| r.id.clone()));
                        let clash = NameClash {
                            name,
                            holder: holder.into_iter().next().unwrap_or_default(),
                        };
                        let record = Box::new(record);
                        return Err(Unapplied::NameTaken { clash, record });
                    }
                    Err(e) => {
                        tracing::warn!(env = %id, error = %e, "cluster: a record from another host could not be stored here");
                        return Err(Unapplied::Failed);
                    }
                }
            }
            Apply::Merge { theirs, base } => {
                let id = theirs.id.clone();
                let merged = store.replace_with(&id, |local| {
                    laid_over(local, theirs, base.as_ref(), &mut clashes)
                });
                match merged.await {
                    Ok(before) => changes.changed.push(before),
                    Err(e) => {
                        tracing::warn!(env = %id, error = %e, "cluster: a change from another host could not be stored here");
                        return Err(Unapplied::Failed);
                    }
                }
            }
            Apply::Remove(id) => match store.remove(&id).await {
                Ok(gone) => changes.removed.push(gone),
                Err(e) => {
                    tracing::warn!(env = %id, error = %e, "cluster: a record deleted on another host could not be removed here");
                    return Err(Unapplied::Failed);
                }
            },
        }
        Ok((changes, clashes))
    }
}

/// Another host's `theirs` with this host's change not written yet (the `local`
/// record differs from `base`, what the bucket had before) laid over it, field by
/// field; where both changed a field, `clashes` gets the other host's lost value.
fn laid_over(
    local: &Record,
    theirs: Record,
    base: Option<&Map<String, Value>>,
    clashes: &mut Vec<Clash>,
) -> Record {
    let local_fields = fields_of(local);
    match base {
        Some(base) if &local_fields != base => {
            let (merged, found) = merge::merge(base, &local_fields, &fields_of(&theirs));
            *clashes = found;
            parse_fields(merged).unwrap_or(theirs)
        }
        _ => theirs,
    }
}

/// Why a compare-and-set did not land.
enum Cas {
    /// Another host wrote the key since `base` (or made it, when there was none).
    Lost,
    /// NATS failed.
    Failed(String),
}

/// The last entries of `keys` in `bucket` (deletes included), read side by side.
async fn entries(bucket: &kv::Store, keys: &[String]) -> Result<Vec<kv::Entry>, ClusterError> {
    let read: Vec<_> = futures_util::stream::iter(keys)
        .map(|key| async move {
            bucket
                .entry(key.clone())
                .await
                .map_err(|e| ClusterError::Nats(format!("reading record {key}: {e}")))
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    Ok(read
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// Writes `bytes` to `key` if its revision is still `base` (`None`: if it has none).
async fn cas(
    bucket: &kv::Store,
    key: &str,
    bytes: bytes::Bytes,
    base: Option<u64>,
) -> Result<u64, Cas> {
    match base {
        Some(revision) => bucket.update(key, bytes, revision).await.map_err(|e| {
            if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                Cas::Lost
            } else {
                Cas::Failed(e.to_string())
            }
        }),
        None => bucket.create(key, bytes).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists {
                Cas::Lost
            } else {
                Cas::Failed(e.to_string())
            }
        }),
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
pub(super) fn parse(entry: &kv::Entry) -> Result<Record, String> {
    if entry.value.len() > validate::MAX_RECORD_BYTES {
        return Err(format!("{} bytes is too large", entry.value.len()));
    }
    let record: Record = serde_json::from_slice(&entry.value).map_err(|e| not_a_record(&e))?;
    validate::check(&record)?;
    if key_of(&record.id) != entry.key {
        return Err("its id does not match its key".into());
    }
    Ok(record)
}

/// Why a value is not a record, without quoting it: serde's own words can hold
/// the value's text (a secret in `config`), so only the kind of fault and where.
fn not_a_record(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof => "not valid JSON".to_owned(),
        Category::Io => "unreadable".to_owned(),
        // A missing field's name is tether's own, never the value's.
        Category::Data if e.to_string().starts_with("missing field") => {
            let said = e.to_string();
            let said = said.split(" at line ").next().unwrap_or_default();
            crate::untrusted::shown(said, 120)
        }
        Category::Data => "not a record (a field of the wrong type or value)".to_owned(),
    };
    format!("{what}, at line {} column {}", e.line(), e.column())
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

    #[test]
    fn why_a_value_is_not_a_record_never_quotes_it() {
        let why = |text: &str| {
            let e = serde_json::from_str::<Record>(text).expect_err("not a record");
            not_a_record(&e)
        };
        let config = r#"{"id":"e","name":"e","provider":"p","config":"s3cret"}"#;
        let said = why(config);
        assert!(
            said.starts_with("not a record") && !said.contains("s3cret"),
            "{said}"
        );
        assert!(why(r#"{"id":"s3cret"#).starts_with("not valid JSON"));
        let said = why(r#"{"id":"e","provider":"p"}"#);
        assert!(
            said.starts_with("missing field `name`, at line 1"),
            "{said}"
        );
    }

    /// Regression: another host's change was merged with the local record when its
    /// entry arrived and stored later, so a local change that landed in between (an
    /// API `PATCH` acknowledged meanwhile) was overwritten and never published.
    #[tokio::test]
    async fn a_local_change_made_while_another_host_s_change_is_applied_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join(".codebolt/environments.json")).unwrap();
        let mut record = Record::new("e".into(), "edited".into(), "handoff".into(), Map::new());
        record.config.insert("a".into(), Value::from(0));
        store.insert(record.clone()).await.unwrap();
        let base = fields_of(&record);

        // Another host set `idleStopSecs`; its change is planned here...
        let mut theirs = record.clone();
        theirs.idle_stop_secs = Some(69);
        let apply = Apply::Merge {
            theirs,
            base: Some(base),
        };
        // ...and before it is stored, this host's API changes another field.
        store
            .update("e", |r| {
                r.config.insert("a".into(), Value::from(9));
            })
            .await
            .unwrap();
        let (changes, clashes) = apply.run(&store).await.unwrap();
        assert_eq!(changes.changed.len(), 1);
        assert!(clashes.is_empty(), "{clashes:?}");
        let now = store.get("e").unwrap();
        assert_eq!(now.idle_stop_secs, Some(69), "the other host's change");
        assert_eq!(now.config["a"], 9, "this host's change");
    }
}
