//! Environment records, persisted in `.codebolt/environments.json` and its journal.
//!
//! The file is the record people read and edit. Host mutations update memory, are
//! appended to a write-ahead journal beside the file ([`journal`]) and return once
//! that append is synced; concurrent mutations share one append and one sync (group
//! commit). A background compaction ([`compact`]) writes the file atomically (temp
//! file, fsync, rename, fsync of the directory) from memory every so often and then
//! drops the journal entries the file now holds; the file's `journalSeq` says which.
//! Opening replays the journal entries the file does not hold ([`replay`]). Fields
//! the host does not know — on a record or at the top level — are kept, so other
//! tools can annotate the file.
//!
//! The file is also edited by people and tools: [`Store::reload`] reads it back and
//! says what changed (the host's own writes are recognised by their hash and ignored).
//! An edit is merged with the host's changes it does not hold yet, field by field
//! ([`patch`]): neither side's change is lost, and where both changed one field the
//! host's acknowledged value wins and the conflict is logged. A hand-edited record is
//! checked like API input ([`validate`]); one that breaks the rules is held back and
//! reported while the rest of the file applies. Before every compaction the host
//! reads the file again and merges an edit it has not seen yet, so a hand edit is
//! never overwritten. An invalid file never replaces the last good state, and before
//! the host writes over it, it keeps a copy beside it
//! (`environments.json.invalid-<timestamp>`).

mod compact;
mod document;
mod fault;
mod file;
mod journal;
pub(crate) mod lock;
mod patch;
mod record;
mod replay;
pub(crate) mod validate;
pub(crate) mod watch;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::MutexExt;
use crate::untrusted;
use document::Document;
use fault::Faults;
pub use fault::{Fault, StorageProblem};
use file::{read_file, sha};
use journal::OpRef;
use patch::{Dirty, Touch, UPDATED_AT};
pub use record::{DesiredState, ProvisionKey, Record, RestartPolicy, StopReason};
use serde_json::Value;

/// A file read from disk: its document, or why it is not one.
type Parsed = Result<Document, String>;

/// How often a compaction re-reads and merges when the file keeps changing under it
/// before it gives up with an error (its entries stay in the journal for the next).
const MAX_MERGE_ROUNDS: usize = 20;
/// How often an unparsable file is read again, [`SETTLE`] apart, before it counts
/// as invalid: an editor writing in place leaves it truncated for a moment.
const SETTLE_READS: usize = 4;
/// Pause between reads of an unparsable file.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(25);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file or its journal failed.
    #[error("{path}: {source}")]
    Io {
        /// The records file, its journal or a temporary sibling.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a valid records file.
    #[error("{path} is invalid: {reason}")]
    Invalid {
        /// The records file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another record already has this name.
    #[error("an environment named {0:?} already exists")]
    NameTaken(String),
    /// No record has this id (the caller's: quoted cut and escaped).
    #[error("no environment with id {}", crate::untrusted::named(.0))]
    NotFound(String),
    /// The record is held back as invalid; the host does not change it.
    #[error("{0}")]
    Held(String),
    /// The file kept changing while the host tried to compact into it.
    #[error(
        "{path} kept changing during {rounds} attempts to merge and write; the changes stay in the journal"
    )]
    Busy {
        /// The records file.
        path: PathBuf,
        /// How many merge-and-write rounds were tried.
        rounds: usize,
    },
    /// The filesystem does not take writes (full, read-only, failing): the change was
    /// not made. The host retries by itself and takes changes again once it can.
    #[error("{path}: {}, so the change was not made ({source}); the host takes changes again by itself once it can write", problem.describe())]
    Storage {
        /// The journal.
        path: PathBuf,
        /// What kind of failure.
        problem: StorageProblem,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The journal cannot be appended to.
    #[error("{path}: {reason}")]
    Journal {
        /// The journal.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

struct State {
    doc: Document,
    /// Sequence number of the newest journaled mutation.
    seq: u64,
    /// Journal entries made but not appended yet, oldest first.
    unwritten: Vec<u8>,
    /// The newest journal entry the records file holds.
    compacted: u64,
    /// SHA-256 of the file as last read or written by this host.
    disk_sha: Option<[u8; 32]>,
    /// Size of the last write, to size the next one's buffer up front.
    last_len: usize,
    /// Why the file on disk is not usable, while it is not.
    invalid: Option<String>,
    /// What was damaged in the journal when the store opened.
    journal_damage: Option<String>,
    /// Records the host changed since the last compaction.
    dirty: HashMap<String, Dirty>,
    /// Outside edits merged, not yet handed to [`Store::reload`]'s caller.
    pending: Changes,
    /// How long the last compaction took; it sets the pace of the next.
    last_cost: Duration,
    /// With a follower ([`Store::follow`]): the ids of the records changed in force
    /// since it last took them.
    followed: Option<HashSet<String>>,
}

/// What a reload found changed in the file, by record id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Records that are new.
    pub added: Vec<String>,
    /// Records whose persisted fields changed.
    pub changed: Vec<Record>,
    /// Records that are gone (as they were).
    pub removed: Vec<Record>,
}

/// The records file, its journal and the in-memory copy.
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    /// Held while appending (or cutting) the journal.
    journal: tokio::sync::Mutex<journal::Appender>,
    /// Held while compacting or reading an outside edit in.
    compaction: tokio::sync::Mutex<()>,
    trigger: compact::Trigger,
    /// Counts the changes in force (the host's and outside edits read in), so a
    /// follower ([`Store::edits`]) knows when to look again.
    edits: tokio::sync::watch::Sender<u64>,
    /// Storage failures in force.
    faults: Mutex<Faults>,
    /// Whether the records file was there when the store opened.
    found: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .finish()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shared.trigger.close();
    }
}

/// The current time as RFC 3339.
pub fn now() -> String {
    stamp(time::OffsetDateTime::now_utc())
}

/// `at` as RFC 3339, the form of every time a record or journal holds.
pub(crate) fn stamp(at: time::OffsetDateTime) -> String {
    (at.format(&time::format_description::well_known::Rfc3339)).unwrap_or_default()
}

impl Store {
    /// Opens (or starts) the records file at `path` and its journal, replaying the
    /// entries the file does not hold. An invalid file leaves the store with only
    /// what the journal adds and [`Store::invalid`] saying why; the file is kept
    /// until fixed or copied.
    pub fn open(path: PathBuf) -> Result<Self, StoreError> {
        let found = path.exists();
        let (state, appender) = replay::open(&path)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                state: Mutex::new(state),
                journal: tokio::sync::Mutex::new(appender),
                compaction: tokio::sync::Mutex::new(()),
                trigger: compact::Trigger::default(),
                faults: Mutex::new(Faults::default()),
                edits: tokio::sync::watch::Sender::new(0),
                found,
            }),
        })
    }

    /// Whether the records file was there when the store opened (a store that
    /// started without one has no say about which records went).
    pub fn found_at_open(&self) -> bool {
        self.shared.found
    }

    /// Why the file on disk is invalid, while it is.
    pub fn invalid(&self) -> Option<String> {
        self.shared.with(|s| s.invalid.clone())
    }

    /// What was damaged in the journal when the store opened (its good entries
    /// applied; a copy of it is kept beside it).
    pub fn journal_damage(&self) -> Option<String> {
        self.shared.with(|s| s.journal_damage.clone())
    }

    /// The storage failure in force, if any: the journal's first (mutations are
    /// refused while it lasts), else the records file's.
    pub fn storage_fault(&self) -> Option<Fault> {
        let faults = self.shared.faults.locked();
        faults.journal.clone().or_else(|| faults.compaction.clone())
    }

    /// One line per record held back as invalid: its position, id, name and why.
    pub fn held(&self) -> Vec<String> {
        self.shared.with(|s| {
            (s.doc.held())
                .map(|(i, h)| {
                    let show = |v: &Option<String>| {
                        v.as_deref().map_or("none".to_owned(), untrusted::named)
                    };
                    let in_force = if h.last_good.is_some() {
                        "its last valid version stays in force"
                    } else {
                        "it is not applied"
                    };
                    format!(
                        "record #{i} (id {}, name {}) is invalid and held back ({in_force}): {}",
                        show(&h.id),
                        show(&h.name),
                        h.reason
                    )
                })
                .collect()
        })
    }

    /// Why the record with `id` is held back, if it is.
    pub fn held_reason(&self, id: &str) -> Option<String> {
        self.shared
            .with(|s| s.doc.held_with(id).map(|h| h.reason.clone()))
    }

    /// Reads the file again after an outside edit and says what changed, including
    /// edits a compaction already merged. `Ok(None)`: nothing to apply.
    /// `Err(Invalid)`: the file is broken; the last good state stays in force.
    pub async fn reload(&self) -> Result<Option<Changes>, StoreError> {
        // Holding the compaction lock keeps a compaction from landing between read
        // and swap.
        let _compaction = self.shared.compaction.lock().await;
        let (digest, parsed) = self.shared.read_settled().await?;
        self.shared
            .with(|s| {
                // `None`: the file the host last read or wrote; nothing new in it.
                if let Some(parsed) = parsed {
                    match parsed {
                        Ok(file) => s.absorb_file(file),
                        Err(reason) => {
                            let e = invalid_file(&self.shared.path, reason);
                            s.invalid = Some(e.to_string());
                            s.disk_sha = Some(digest);
                            return Err(e);
                        }
                    }
                    s.disk_sha = Some(digest);
                    s.invalid = None;
                }
                let changes = std::mem::take(&mut s.pending);
                Ok((!changes.is_empty()).then_some(changes))
            })
            .inspect(|changes| {
                if changes.is_some() {
                    self.shared.edits.send_modify(|n| *n += 1);
                }
            })
    }

    /// A receiver that wakes after each change in force: the host's own and outside
    /// edits once [`Store::reload`] has read them in.
    pub fn edits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.edits.subscribe()
    }

    /// How many changes came in force so far: a change made before this call is
    /// among them.
    pub fn edited(&self) -> u64 {
        *self.shared.edits.borrow()
    }

    /// Starts keeping the ids of the records that change in force (the host's
    /// changes and outside edits read in), for [`Store::take_followed`]: a follower
    /// (the cluster's sync) looks at what changed, not at every record.
    pub fn follow(&self) {
        self.shared
            .with(|s| s.followed.get_or_insert_with(HashSet::new).clear());
    }

    /// The ids of the records that changed in force (or went) since the last call.
    pub fn take_followed(&self) -> HashSet<String> {
        self.shared
            .with(|s| s.followed.as_mut().map(std::mem::take).unwrap_or_default())
    }

    /// Path of the records file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Every record in force, in file order.
    pub fn list(&self) -> Vec<Record> {
        self.shared.with(|s| s.doc.records().cloned().collect())
    }

    /// How many records in force match `pred`, without copying any.
    pub(crate) fn count(&self, pred: impl Fn(&Record) -> bool) -> usize {
        self.shared
            .with(|s| s.doc.records().filter(|r| pred(r)).count())
    }

    /// What `pick` makes of each record in force it picks, in one pass under the
    /// lock, copying only what it returns.
    pub(crate) fn select<T>(&self, pick: impl Fn(&Record) -> Option<T>) -> Vec<T> {
        self.shared
            .with(|s| s.doc.records().filter_map(&pick).collect())
    }

    /// The first record in force (in file order) matching `pred`.
    pub(crate) fn find(&self, pred: impl Fn(&Record) -> bool) -> Option<Record> {
        self.shared
            .with(|s| s.doc.records().find(|r| pred(r)).cloned())
    }

    /// The record in force with `id`.
    pub fn get(&self, id: &str) -> Option<Record> {
        self.shared.with(|s| s.doc.find(id).cloned())
    }

    /// `f` of the record in force with `id`, without copying it (for a look at a
    /// field or two).
    pub(crate) fn peek<T>(&self, id: &str, f: impl FnOnce(&Record) -> T) -> Option<T> {
        self.shared.with(|s| s.doc.find(id).map(f))
    }

    /// Adds a record; its name must be unused (by held-back entries too).
    pub async fn insert(&self, record: Record) -> Result<(), StoreError> {
        self.mutate(|s| {
            if s.doc.name_taken(&record.name) {
                return Err(StoreError::NameTaken(record.name.clone()));
            }
            let seq = s.journal(&OpRef::Insert { record: &record })?;
            s.touch(&record.id, Dirty::new(Touch::Inserted, None));
            s.doc.push(record);
            Ok(((), Some(seq)))
        })
        .await
    }

    /// Changes the record with `id` and stamps `updatedAt` if anything changed (a
    /// change that changes nothing writes nothing); returns the new record.
    /// For a record held back as invalid the change stays in memory: the file keeps
    /// the text as written.
    pub async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Record),
    ) -> Result<Record, StoreError> {
        self.change(id, change, true).await
    }

    /// Sets the record with `id` to what `to` makes of it, `updatedAt` included (a
    /// change another host made, laid over this host's own not yet sent). `to` sees
    /// the record as it is under the store's lock, so a change that lands while the
    /// caller prepares is in what `to` lays over, not overwritten. Returns the record
    /// before.
    pub async fn replace_with(
        &self,
        id: &str,
        to: impl FnOnce(&Record) -> Record,
    ) -> Result<Record, StoreError> {
        let mut before = None;
        self.change(
            id,
            |r| {
                let next = to(r);
                before = Some(std::mem::replace(r, next));
            },
            false,
        )
        .await?;
        before.ok_or_else(|| StoreError::NotFound(id.to_owned()))
    }

    async fn change(
        &self,
        id: &str,
        change: impl FnOnce(&mut Record),
        stamp: bool,
    ) -> Result<Record, StoreError> {
        self.mutate(|s| {
            let (record, good) = s
                .doc
                .find_mut(id)
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            if !good {
                change(record);
                if stamp {
                    record.updated_at = now();
                }
                return Ok((record.clone(), None));
            }
            let before = patch::fields_of(record);
            change(record);
            let after = patch::fields_of(record);
            let mut fields = patch::changed(&before, &after);
            if fields.is_empty() {
                // Nothing changed (`updatedAt` stays: it is the last change's time):
                // nothing to journal, compact or announce. What the record holds may
                // still be on its way to the disk (another writer made the same change
                // a moment ago): it is acknowledged once that is.
                let latest = s.seq;
                return Ok((record.clone(), Some(latest)));
            }
            if stamp {
                record.updated_at = now();
                let stamped = Value::String(record.updated_at.clone());
                fields.insert(UPDATED_AT.to_owned(), stamped);
            }
            let out = record.clone();
            if before.get("name") != after.get("name") {
                s.doc.renamed();
            }
            let seq = s.journal(&OpRef::Update {
                id,
                fields: &fields,
            })?;
            let mut dirty = Dirty::new(Touch::Updated, Some(before));
            dirty.fields = fields.keys().cloned().collect();
            s.touch(id, dirty);
            Ok((out, Some(seq)))
        })
        .await
    }

    /// Removes the record with `id`, returning it. A record held back as invalid is
    /// never removed by the host.
    pub async fn remove(&self, id: &str) -> Result<Record, StoreError> {
        self.mutate(|s| {
            if let Some(h) = s.doc.held_with(id) {
                return Err(StoreError::Held(format!(
                    "the record with id {} is invalid and held back ({}); fix or remove it in {}",
                    untrusted::named(id),
                    h.reason,
                    self.shared.path.display()
                )));
            }
            if s.doc.find(id).is_none() {
                return Err(StoreError::NotFound(id.to_owned()));
            }
            let seq = s.journal(&OpRef::Remove { id })?;
            let gone = s
                .doc
                .remove_good(id)
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            s.touch(
                id,
                Dirty::new(Touch::Removed, Some(patch::fields_of(&gone))),
            );
            Ok((gone, Some(seq)))
        })
        .await
    }

    /// Makes every mutation so far durable and compacts the journal into the file
    /// now (on shutdown, and for tests that read the file).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let seq = self.shared.with(|s| s.seq);
        self.commit(seq).await?;
        self.shared.compact().await
    }

    /// Applies `f` to memory; when it journals an entry, returns once that entry is
    /// durable. While the journal is faulted, the disk is probed first and the
    /// mutation refused, memory untouched, if it still does not take writes.
    async fn mutate<R>(
        &self,
        f: impl FnOnce(&mut State) -> Result<(R, Option<u64>), StoreError>,
    ) -> Result<R, StoreError> {
        if self.shared.faults.locked().journal.is_some() {
            self.shared.recover().await?;
        }
        let (out, seq) = self.shared.with(f)?;
        if let Some(seq) = seq {
            self.commit(seq).await?;
        }
        self.shared.edits.send_modify(|n| *n += 1);
        Ok(out)
    }

    /// Returns once journal entry `seq` is appended and synced. Writers queue on the
    /// journal lock; the first one's append carries every entry made before it, so
    /// the others find theirs durable and return without a sync of their own.
    async fn commit(&self, seq: u64) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut j = shared.journal.lock().await;
        if j.durable >= seq {
            return Ok(());
        }
        shared.append_unwritten(&mut j).await
    }
}

impl Shared {
    /// Appends and syncs every entry made so far, under the journal lock `j`. A
    /// failed append is cut off again (so the next does not follow junk), its
    /// entries stay buffered for the next, and the journal is marked faulted.
    async fn append_unwritten(
        self: &Arc<Self>,
        j: &mut journal::Appender,
    ) -> Result<(), StoreError> {
        if let Some(reason) = &j.broken {
            return Err(StoreError::Journal {
                path: j.path.clone(),
                reason: reason.clone(),
            });
        }
        if j.cut_pending {
            // Still a storage fault while the filesystem refuses even this.
            j.file
                .set_len(j.len)
                .map_err(|e| self.journal_fault(&j.path, e))?;
            j.cut_pending = false;
        }
        let (bytes, upto) = self.with(|s| (std::mem::take(&mut s.unwritten), s.seq));
        if bytes.is_empty() {
            j.durable = upto;
            return Ok(());
        }
        let file = j.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let outcome = journal::append(&file, &bytes);
            (outcome, bytes)
        })
        .await;
        let (outcome, bytes) = match written {
            Ok(done) => done,
            Err(e) => {
                // The entries are lost to the journal (not to memory: the next
                // compaction writes them); later appends must not follow a partial one.
                j.broken = Some(format!("appending failed: {e}"));
                return Err(StoreError::Journal {
                    path: j.path.clone(),
                    reason: e.to_string(),
                });
            }
        };
        match outcome {
            Ok(()) => {
                j.len += bytes.len() as u64;
                j.durable = upto;
                self.clear_journal_fault(&j.path);
                let over = j.len >= compact::JOURNAL_LIMIT;
                self.trigger.poke(self, over);
                Ok(())
            }
            Err(source) => {
                // On a read-only or failing filesystem the cut fails too; it is
                // made before the next append, which is refused until it works.
                j.cut_pending = j.file.set_len(j.len).is_err();
                self.with(|s| {
                    let mut again = bytes;
                    again.extend_from_slice(&s.unwritten);
                    s.unwritten = again;
                });
                Err(self.journal_fault(&j.path, source))
            }
        }
    }

    /// Notes that appending to the journal at `path` failed with `source`; the error
    /// for the caller. The compaction task is woken to retry.
    fn journal_fault(self: &Arc<Self>, path: &Path, source: std::io::Error) -> StoreError {
        let fault = {
            let mut faults = self.faults.locked();
            let fault = Fault::new(path, &source, faults.journal.as_ref());
            if faults.journal.is_none() {
                tracing::error!(%fault, "the records journal does not take writes; changes are refused until it does");
            }
            faults.journal = Some(fault.clone());
            fault
        };
        self.trigger.poke(self, false);
        StoreError::Storage {
            path: fault.path,
            problem: fault.problem,
            source,
        }
    }

    fn clear_journal_fault(&self, path: &Path) {
        if self.faults.locked().journal.take().is_some() {
            tracing::info!(path = %path.display(), "the records journal takes writes again");
        }
    }

    /// Writes what a failed append left buffered, or, with nothing buffered, asks
    /// the filesystem for room; clears the journal's fault when it works.
    pub(super) async fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut j = self.journal.lock().await;
        if self.faults.locked().journal.is_none() {
            return Ok(());
        }
        if j.cut_pending || self.with(|s| !s.unwritten.is_empty()) {
            return self.append_unwritten(&mut j).await;
        }
        let (file, len) = (j.file.clone(), j.len);
        let probed = tokio::task::spawn_blocking(move || fault::probe(&file, len))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match probed {
            Ok(()) => {
                self.clear_journal_fault(&j.path);
                Ok(())
            }
            Err(source) => Err(self.journal_fault(&j.path, source)),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding the lock cannot leave a half-applied record (each
        // closure mutates one Vec slot), so a poisoned lock is still usable.
        let mut guard = self.state.locked();
        f(&mut guard)
    }

    /// The digest of the file (a missing file reads as `{}`) and, unless it is the
    /// file the host last read or wrote, its parse. An unparsable file is read again
    /// a few times first: an editor writing in place leaves it empty or half-written
    /// for a moment.
    async fn read_settled(&self) -> Result<([u8; 32], Option<Parsed>), StoreError> {
        let known = self.with(|s| s.disk_sha);
        let mut round = 0;
        loop {
            let path = self.path.clone();
            let (digest, parsed) = tokio::task::spawn_blocking(move || {
                read_file(&path).map(|bytes| {
                    let digest = sha(&bytes);
                    (
                        digest,
                        (Some(digest) != known).then(|| Document::parse(&bytes)),
                    )
                })
            })
            .await
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })??;
            round += 1;
            if !matches!(parsed, Some(Err(_))) || round >= SETTLE_READS {
                return Ok((digest, parsed));
            }
            tokio::time::sleep(SETTLE).await;
        }
    }
}

impl State {
    /// Appends `op` as the next journal entry to the unwritten ones; its number.
    fn journal(&mut self, op: &OpRef<'_>) -> Result<u64, StoreError> {
        let seq = self.seq + 1;
        journal::encode(seq, op, &mut self.unwritten).map_err(|e| StoreError::Invalid {
            path: PathBuf::from("environments.journal"),
            reason: e.to_string(),
        })?;
        self.seq = seq;
        Ok(seq)
    }

    fn touch(&mut self, id: &str, touch: Dirty) {
        if let Some(followed) = &mut self.followed {
            followed.insert(id.to_owned());
        }
        let net = match self.dirty.remove(id) {
            Some(before) => before.then(touch),
            None => touch,
        };
        self.dirty.insert(id.to_owned(), net);
    }

    /// Puts back the touches of a compaction that did not happen (newer ones win).
    fn restore(&mut self, dirty: HashMap<String, Dirty>) {
        for (id, before) in dirty {
            let net = match self.dirty.remove(&id) {
                Some(later) => before.then(later),
                None => before,
            };
            self.dirty.insert(id, net);
        }
    }

    /// Replaces memory with `file` plus the host's changes it does not hold, and
    /// keeps what changed for the next [`Store::reload`].
    fn absorb_file(&mut self, file: Document) {
        let (merged, conflicts) = self.doc.merged(file, &mut self.dirty);
        for conflict in conflicts {
            tracing::warn!(%conflict, "records file: an outside edit and the host changed the same record");
        }
        let changes = document::diff(self.doc.records(), merged.records());
        if let Some(followed) = &mut self.followed {
            let ids = (changes.added.iter())
                .chain(changes.changed.iter().map(|r| &r.id))
                .chain(changes.removed.iter().map(|r| &r.id));
            followed.extend(ids.cloned());
        }
        self.doc = merged;
        log_held(&self.doc);
        self.pending.absorb(changes);
    }
}

fn log_held(doc: &Document) {
    for (i, h) in doc.held() {
        tracing::error!(
            record = i,
            id = ?h.id.as_deref().map(untrusted::named),
            reason = %h.reason,
            "a record of the records file is invalid; it is held back and left as written"
        );
    }
}

fn invalid_file(path: &Path, reason: String) -> StoreError {
    StoreError::Invalid {
        path: path.to_owned(),
        reason,
    }
}

/// Takes the first step of store write `write` (an [`Store::update`] and the like),
/// which puts its change in force in memory, for a caller with work to overlap with
/// the write's sync. `Pending`: the change is in force and the sync still runs (poll
/// `write` to finish it). When the first step did not apply the change (the store was
/// recovering from a fault; `in_force` says whether it is in force), waits for the
/// whole write instead.
pub async fn in_force<F: std::future::Future>(
    mut write: std::pin::Pin<&mut F>,
    in_force: impl FnOnce() -> bool,
) -> std::task::Poll<F::Output> {
    let first = futures_util::poll!(write.as_mut());
    if first.is_pending() && !in_force() {
        return std::task::Poll::Ready(write.await);
    }
    first
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod journal_tests;

#[cfg(test)]
mod fuzz;
