//! Environment records, persisted in `.codebolt/environments.json`.
//!
//! The file is the source of truth across restarts. Every write is atomic (temp file,
//! fsync, rename, fsync of the directory), and fields the host does not know — on a
//! record or at the top level — are kept on rewrite, so other tools can annotate it.
//! Mutations update memory first, then persist; concurrent mutations share one write
//! (the writer snapshots the newest state), and a mutation returns only once a write
//! that contains it is durable.
//!
//! The file is also edited by people and tools: [`Store::reload`] reads it back and
//! says what changed (the host's own writes are recognised by their hash and ignored).
//! A hand-edited record is checked like API input ([`validate`]); one that breaks the
//! rules is held back and reported while the rest of the file applies. Before every
//! write the host reads the file again and merges an edit it has not seen yet, so a
//! hand edit is never overwritten. An invalid file never replaces the last good state,
//! and before the host writes over it, it keeps a copy beside it
//! (`environments.json.invalid-<timestamp>`).

mod document;
pub(crate) mod lock;
mod record;
pub(crate) mod validate;
pub(crate) mod watch;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::sync::MutexExt;
use crate::untrusted;
use document::{Document, Entry, FORMAT_VERSION, Touch};
pub use record::{DesiredState, ProvisionKey, Record, RestartPolicy, StopReason};

/// A file read from disk: its document, or why it is not one.
type Parsed = Result<Document, String>;

/// How often a write re-reads and merges when the file keeps changing under it
/// before it gives up with an error (the mutation stays pending for the next write).
const MAX_MERGE_ROUNDS: usize = 20;
/// How often an unparsable file is read again, [`SETTLE`] apart, before it counts
/// as invalid: an editor writing in place leaves it truncated for a moment.
const SETTLE_READS: usize = 4;
/// Pause between reads of an unparsable file.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(25);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The records file (or its temporary sibling).
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
    /// No record has this id.
    #[error("no environment with id {0:?}")]
    NotFound(String),
    /// The record is held back as invalid; the host does not change it.
    #[error("{0}")]
    Held(String),
    /// The file kept changing while the host tried to write its change.
    #[error(
        "{path} kept changing during {rounds} attempts to merge and write; the change stays pending"
    )]
    Busy {
        /// The records file.
        path: PathBuf,
        /// How many merge-and-write rounds were tried.
        rounds: usize,
    },
}

struct State {
    doc: Document,
    /// Bumped on every mutation; compared with what the writer last made durable.
    version: u64,
    /// SHA-256 of the file as last read or written by this host.
    disk_sha: Option<[u8; 32]>,
    /// Size of the last write, to size the next one's buffer up front.
    last_len: usize,
    /// Why the file on disk is not usable, while it is not.
    invalid: Option<String>,
    /// Records the host touched since its last write.
    dirty: HashMap<String, Touch>,
    /// Outside edits merged by a write, not yet handed to [`Store::reload`]'s caller.
    pending: Changes,
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

/// The records file and its in-memory copy.
pub struct Store {
    path: PathBuf,
    state: Mutex<State>,
    /// Held while writing; holds the version last made durable.
    writer: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// The current time as RFC 3339.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Store {
    /// Opens (or starts) the records file at `path`. An invalid file leaves the store
    /// empty and [`Store::invalid`] saying why; the file is kept until fixed or copied.
    pub fn open(path: PathBuf) -> Result<Self, StoreError> {
        let bytes = read_file(&path)?;
        let (doc, invalid) = match Document::parse(&bytes) {
            Ok(doc) => (doc, None),
            Err(reason) => {
                let e = invalid_file(&path, reason);
                tracing::error!(error = %e, "records file is invalid; starting with no environments");
                (Document::default(), Some(e.to_string()))
            }
        };
        log_held(&doc);
        Ok(Self {
            path,
            state: Mutex::new(State {
                doc,
                version: 0,
                disk_sha: Some(sha(&bytes)),
                last_len: 0,
                invalid,
                dirty: HashMap::new(),
                pending: Changes::default(),
            }),
            writer: tokio::sync::Mutex::new(0),
        })
    }

    /// Why the file on disk is invalid, while it is.
    pub fn invalid(&self) -> Option<String> {
        self.with(|s| s.invalid.clone())
    }

    /// One line per record held back as invalid: its position, id, name and why.
    pub fn held(&self) -> Vec<String> {
        self.with(|s| {
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
        self.with(|s| {
            (s.doc.held())
                .find(|(_, h)| h.id.as_deref() == Some(id))
                .map(|(_, h)| h.reason.clone())
        })
    }

    /// Reads the file again after an outside edit and says what changed, including
    /// edits an earlier host write already merged. `Ok(None)`: nothing to apply.
    /// `Err(Invalid)`: the file is broken; the last good state stays in force.
    pub async fn reload(&self) -> Result<Option<Changes>, StoreError> {
        // Holding the writer lock keeps a write from landing between read and swap.
        let mut written = self.writer.lock().await;
        let (digest, parsed) = self.read_settled().await?;
        let clean_before = *written;
        let outcome = self.with(|s| {
            // `None`: the file the host last read or wrote; nothing new in it.
            if let Some(parsed) = parsed {
                let file = match parsed {
                    Ok(file) => file,
                    Err(reason) => {
                        let e = invalid_file(&self.path, reason);
                        s.invalid = Some(e.to_string());
                        s.disk_sha = Some(digest);
                        return Err(e);
                    }
                };
                // Unwritten host mutations stay on top; their write follows.
                let clean = s.version == clean_before;
                s.absorb_file(file);
                s.disk_sha = Some(digest);
                s.invalid = None;
                s.version += 1;
                if clean {
                    return Ok((std::mem::take(&mut s.pending), Some(s.version)));
                }
            }
            Ok((std::mem::take(&mut s.pending), None))
        })?;
        let (changes, clean_version) = outcome;
        if let Some(version) = clean_version {
            *written = version;
        }
        Ok((!changes.is_empty()).then_some(changes))
    }

    /// Path of the records file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record in force, in file order.
    pub fn list(&self) -> Vec<Record> {
        self.with(|s| s.doc.records().cloned().collect())
    }

    /// How many records in force match `pred`, without copying any.
    pub(crate) fn count(&self, pred: impl Fn(&Record) -> bool) -> usize {
        self.with(|s| s.doc.records().filter(|r| pred(r)).count())
    }

    /// The first record in force (in file order) matching `pred`.
    pub(crate) fn find(&self, pred: impl Fn(&Record) -> bool) -> Option<Record> {
        self.with(|s| s.doc.records().find(|r| pred(r)).cloned())
    }

    /// The record in force with `id`.
    pub fn get(&self, id: &str) -> Option<Record> {
        self.with(|s| s.doc.find(id).cloned())
    }

    /// `f` of the record in force with `id`, without copying it (for a look at a
    /// field or two, often).
    pub(crate) fn peek<T>(&self, id: &str, f: impl FnOnce(&Record) -> T) -> Option<T> {
        self.with(|s| s.doc.find(id).map(f))
    }

    /// Adds a record; its name must be unused (by held-back entries too).
    pub async fn insert(&self, record: Record) -> Result<(), StoreError> {
        self.mutate(|s| {
            if s.doc.name_taken(&record.name) {
                return Err(StoreError::NameTaken(record.name.clone()));
            }
            s.touch(&record.id, Touch::Inserted);
            s.doc.environments.push(Entry::Good(record));
            Ok(())
        })
        .await
    }

    /// Changes the record with `id` and stamps `updatedAt`; returns the new record.
    /// For a record held back as invalid the change stays in memory: the file keeps
    /// the text as written.
    pub async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Record),
    ) -> Result<Record, StoreError> {
        self.mutate(|s| {
            let (record, good) = s
                .doc
                .find_mut(id)
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            change(record);
            record.updated_at = now();
            let out = record.clone();
            if good {
                s.touch(id, Touch::Updated);
            }
            Ok(out)
        })
        .await
    }

    /// Removes the record with `id`, returning it. A record held back as invalid is
    /// never removed by the host.
    pub async fn remove(&self, id: &str) -> Result<Record, StoreError> {
        self.mutate(|s| {
            if let Some((_, h)) = s.doc.held().find(|(_, h)| h.id.as_deref() == Some(id)) {
                return Err(StoreError::Held(format!(
                    "the record with id {} is invalid and held back ({}); fix or remove it in {}",
                    untrusted::named(id),
                    h.reason,
                    self.path.display()
                )));
            }
            let pos = (s.doc.environments.iter())
                .position(|e| matches!(e, Entry::Good(r) if r.id == id))
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            s.touch(id, Touch::Removed);
            match s.doc.environments.remove(pos) {
                Entry::Good(r) => Ok(r),
                Entry::Held(_) => Err(StoreError::NotFound(id.to_owned())),
            }
        })
        .await
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding the lock cannot leave a half-applied record (each
        // closure mutates one Vec slot), so a poisoned lock is still usable.
        let mut guard = self.state.locked();
        f(&mut guard)
    }

    async fn mutate<R>(
        &self,
        f: impl FnOnce(&mut State) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let out = self.with(|s| {
            let out = f(s)?;
            s.version += 1;
            Ok::<_, StoreError>(out)
        })?;
        self.persist().await?;
        Ok(out)
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

    /// Makes the newest in-memory state durable unless a write already covered it.
    /// The file is read first: an edit the host has not seen is merged (and reported
    /// by the next [`Store::reload`]), and the file is checked again just before the
    /// rename, so a write never replaces a change it has not read.
    async fn persist(&self) -> Result<(), StoreError> {
        let mut written = self.writer.lock().await;
        // Writers queue here; the first one's write covers every mutation made before
        // it serialised, so the others return without serialising the whole document.
        if self.with(|s| s.version <= *written) {
            return Ok(());
        }
        for _ in 0..MAX_MERGE_ROUNDS {
            let (seen, parsed) = self.read_settled().await?;
            let (version, bytes, keep_invalid, dirty) = self.with(|s| {
                if let Some(parsed) = parsed {
                    match parsed {
                        Ok(file) => {
                            tracing::info!(
                                "merging an outside edit of the records file before writing"
                            );
                            s.absorb_file(file);
                            s.invalid = None;
                        }
                        Err(reason) => {
                            s.invalid = Some(invalid_file(&self.path, reason).to_string());
                        }
                    }
                    s.disk_sha = Some(seen);
                }
                s.doc.version = FORMAT_VERSION;
                // Growing the buffer from empty copied the document over and over.
                let mut bytes = Vec::with_capacity(s.last_len + s.last_len / 8);
                let serialised = serde_json::to_writer_pretty(&mut bytes, &s.doc).map(|()| bytes);
                let dirty = std::mem::take(&mut s.dirty);
                (s.version, serialised, s.invalid.is_some(), dirty)
            });
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.with(|s| s.restore(dirty));
                    return Err(StoreError::Invalid {
                        path: self.path.clone(),
                        reason: e.to_string(),
                    });
                }
            };
            let digest = sha(&bytes);
            let len = bytes.len();
            let path = self.path.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                if keep_invalid {
                    keep_copy(&path)?;
                }
                write_unless_changed(&path, &bytes, seen)
            })
            .await
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })
            .and_then(|r| r);
            match outcome {
                Ok(true) => {
                    self.with(|s| {
                        s.disk_sha = Some(digest);
                        s.invalid = None;
                        s.last_len = len;
                    });
                    *written = version;
                    return Ok(());
                }
                // Edited between the read and the rename: read and merge again.
                Ok(false) => self.with(|s| s.restore(dirty)),
                Err(e) => {
                    self.with(|s| s.restore(dirty));
                    return Err(e);
                }
            }
        }
        Err(StoreError::Busy {
            path: self.path.clone(),
            rounds: MAX_MERGE_ROUNDS,
        })
    }
}

impl State {
    fn touch(&mut self, id: &str, touch: Touch) {
        let net = match self.dirty.get(id) {
            Some(before) => before.then(touch),
            None => touch,
        };
        self.dirty.insert(id.to_owned(), net);
    }

    /// Puts back the touches of a write that did not happen (newer ones win).
    fn restore(&mut self, dirty: HashMap<String, Touch>) {
        for (id, before) in dirty {
            let net = match self.dirty.get(&id) {
                Some(later) => before.then(*later),
                None => before,
            };
            self.dirty.insert(id, net);
        }
    }

    /// Replaces memory with `file` plus the host's unwritten mutations, and keeps what
    /// changed for the next [`Store::reload`].
    fn absorb_file(&mut self, file: Document) {
        let merged = self.doc.merged(file, &self.dirty);
        let changes = document::diff(self.doc.records(), merged.records());
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

/// The file's bytes; a missing file (deleted by hand) reads as an empty one.
fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(b"{}".to_vec()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Copies an invalid records file aside before the host replaces it.
fn keep_copy(path: &Path) -> Result<(), StoreError> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let name = format!(
        "{}.invalid-{stamp}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("environments.json")
    );
    let copy = path.with_file_name(name);
    match std::fs::copy(path, &copy) {
        Ok(_) => {
            tracing::warn!(copy = %copy.display(), "kept a copy of the invalid records file");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io { path: copy, source }),
    }
}

/// [`write_atomic`], unless the file no longer hashes to `seen` once the new text is
/// durable in its temp file (`Ok(false)`: someone edited it; nothing was replaced).
fn write_unless_changed(path: &Path, bytes: &[u8], seen: [u8; 32]) -> Result<bool, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = temp_with(dir, bytes).map_err(io)?;
    if sha(&read_file(path)?) != seen {
        return Ok(false);
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(true)
}

/// A durable temp file beside the records file holding `bytes`.
fn temp_with(dir: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".environments.json.")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz;
