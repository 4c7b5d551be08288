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
//! An invalid file never replaces the last good state, and before the host writes over
//! it, it keeps a copy beside it (`environments.json.invalid-<timestamp>`).

pub mod lock;
pub mod watch;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Version of the file layout written by this host.
const FORMAT_VERSION: u64 = 1;

/// Whether an environment should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// It should be running.
    Running,
    /// It should be stopped.
    #[default]
    Stopped,
}

/// What to do when a running environment fails (a health check, its runtime gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it in `error`.
    Never,
    /// Restart it with backoff, up to the retry cap, then leave it in `error`.
    #[default]
    OnFailure,
    /// Restart it with backoff, without a cap.
    Always,
}

/// One environment as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Stable id.
    pub id: String,
    /// Unique human name; also names the workspace directory.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// Environment config handed to the provider.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// What the operator wants.
    #[serde(default)]
    pub desired_state: DesiredState,
    /// The provider's resource, for reconnecting after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Where the runtime works, as reported by the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_path: Option<String>,
    /// Small key/values the provider persisted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provider_state: BTreeMap<String, String>,
    /// Generation of the current runtime token (one per start).
    #[serde(default)]
    pub runtime_generation: u64,
    /// SHA-256 of the current runtime token, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_token_sha256: Option<String>,
    /// Last failure, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// What to do when it fails while it should be running.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// When the most recent restarts happened (RFC 3339, oldest first, bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_history: Vec<String>,
    /// RFC 3339 creation time (empty in a hand-written record).
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339 time of the last change.
    #[serde(default)]
    pub updated_at: String,
    /// Fields this host does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Record {
    /// A new, never-started record stamped now.
    pub fn new(id: String, name: String, provider: String, config: Map<String, Value>) -> Self {
        let now = now();
        Self {
            id,
            name,
            provider,
            config,
            desired_state: DesiredState::Stopped,
            resource_id: None,
            workspace_path: None,
            provider_state: BTreeMap::new(),
            runtime_generation: 0,
            runtime_token_sha256: None,
            last_error: None,
            restarts: 0,
            restart_policy: RestartPolicy::default(),
            restart_history: Vec::new(),
            created_at: now.clone(),
            updated_at: now,
            extra: Map::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Document {
    #[serde(default)]
    version: u64,
    #[serde(default)]
    environments: Vec<Record>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a valid records file.
    #[error("{path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// Another record already has this name.
    #[error("an environment named {0:?} already exists")]
    NameTaken(String),
    /// No record has this id.
    #[error("no environment with id {0:?}")]
    NotFound(String),
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
        let (doc, disk_sha, invalid) = match std::fs::read(&path) {
            Ok(bytes) => match parse(&path, &bytes) {
                Ok(doc) => (doc, Some(sha(&bytes)), None),
                Err(e) => {
                    tracing::error!(error = %e, "records file is invalid; starting with no environments");
                    (Document::default(), Some(sha(&bytes)), Some(e.to_string()))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Document::default(), None, None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        Ok(Self {
            path,
            state: Mutex::new(State {
                doc,
                version: 0,
                disk_sha,
                last_len: 0,
                invalid,
            }),
            writer: tokio::sync::Mutex::new(0),
        })
    }

    /// Why the file on disk is invalid, while it is.
    pub fn invalid(&self) -> Option<String> {
        self.with(|s| s.invalid.clone())
    }

    /// Reads the file again after an outside edit. `Ok(None)`: nothing to apply (the
    /// host's own write, no change, or a host write pending that will win).
    /// `Err(Invalid)`: the file is broken; the last good state stays in force.
    pub async fn reload(&self) -> Result<Option<Changes>, StoreError> {
        // Holding the writer lock keeps a write from landing between read and swap.
        let mut written = self.writer.lock().await;
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            // Mid-rename or deleted by hand: a deleted file is an empty one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"{}".to_vec(),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let digest = sha(&bytes);
        if self.with(|s| s.disk_sha == Some(digest)) {
            return Ok(None);
        }
        let doc = match parse(&self.path, &bytes) {
            Ok(doc) => doc,
            Err(e) => {
                self.with(|s| {
                    s.invalid = Some(e.to_string());
                    s.disk_sha = Some(digest);
                });
                return Err(e);
            }
        };
        let changes = self.with(|s| {
            if s.version > *written {
                // A mutation the API is about to acknowledge is not on disk yet; its
                // write will replace this edit (last writer wins), so keep memory.
                tracing::warn!("an outside edit raced with a host write; the host write wins");
                return None;
            }
            let changes = diff(&s.doc.environments, &doc.environments);
            s.doc = doc;
            s.version += 1;
            s.disk_sha = Some(digest);
            s.invalid = None;
            Some((changes, s.version))
        });
        Ok(changes.map(|(changes, version)| {
            *written = version;
            changes
        }))
    }

    /// Path of the records file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, in file order.
    pub fn list(&self) -> Vec<Record> {
        self.with(|s| s.doc.environments.clone())
    }

    /// The record with `id`.
    pub fn get(&self, id: &str) -> Option<Record> {
        self.with(|s| s.doc.environments.iter().find(|r| r.id == id).cloned())
    }

    /// Adds a record; its name must be unused.
    pub async fn insert(&self, record: Record) -> Result<(), StoreError> {
        self.mutate(|doc| {
            if doc.environments.iter().any(|r| r.name == record.name) {
                return Err(StoreError::NameTaken(record.name.clone()));
            }
            doc.environments.push(record);
            Ok(())
        })
        .await
    }

    /// Changes the record with `id` and stamps `updatedAt`; returns the new record.
    pub async fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Record),
    ) -> Result<Record, StoreError> {
        self.mutate(|doc| {
            let record = doc
                .environments
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            change(record);
            record.updated_at = now();
            Ok(record.clone())
        })
        .await
    }

    /// Removes the record with `id`, returning it.
    pub async fn remove(&self, id: &str) -> Result<Record, StoreError> {
        self.mutate(|doc| {
            let pos = doc
                .environments
                .iter()
                .position(|r| r.id == id)
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            Ok(doc.environments.remove(pos))
        })
        .await
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding the lock cannot leave a half-applied record (each
        // closure mutates one Vec slot), so a poisoned lock is still usable.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    async fn mutate<R>(
        &self,
        f: impl FnOnce(&mut Document) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let out = self.with(|s| {
            let out = f(&mut s.doc)?;
            s.version += 1;
            Ok::<_, StoreError>(out)
        })?;
        self.persist().await?;
        Ok(out)
    }

    /// Makes the newest in-memory state durable unless a write already covered it.
    async fn persist(&self) -> Result<(), StoreError> {
        let mut written = self.writer.lock().await;
        // Writers queue here; the first one's write covers every mutation made before
        // it serialised, so the others return without serialising the whole document.
        let Some((version, bytes, keep_invalid)) = self.with(|s| {
            (s.version > *written).then(|| {
                s.doc.version = FORMAT_VERSION;
                // Growing the buffer from empty copied the document over and over.
                let mut bytes = Vec::with_capacity(s.last_len + s.last_len / 8);
                let serialised = serde_json::to_writer_pretty(&mut bytes, &s.doc).map(|()| bytes);
                (s.version, serialised, s.invalid.is_some())
            })
        }) else {
            return Ok(());
        };
        let bytes = bytes.map_err(|e| StoreError::Invalid {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let digest = sha(&bytes);
        let len = bytes.len();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            if keep_invalid {
                keep_copy(&path)?;
            }
            write_atomic(&path, &bytes)
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })??;
        self.with(|s| {
            s.disk_sha = Some(digest);
            s.invalid = None;
            s.last_len = len;
        });
        *written = version;
        Ok(())
    }
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Ids added, records changed and records removed between two versions of the list.
fn diff(old: &[Record], new: &[Record]) -> Changes {
    let old_by_id: std::collections::HashMap<&str, &Record> =
        old.iter().map(|r| (r.id.as_str(), r)).collect();
    let new_ids: std::collections::HashSet<&str> = new.iter().map(|r| r.id.as_str()).collect();
    let mut changes = Changes::default();
    for r in new {
        match old_by_id.get(r.id.as_str()) {
            None => changes.added.push(r.id.clone()),
            Some(before) if *before != r => changes.changed.push((*before).clone()),
            Some(_) => {}
        }
    }
    changes.removed = old
        .iter()
        .filter(|r| !new_ids.contains(r.id.as_str()))
        .cloned()
        .collect();
    changes
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

fn parse(path: &Path, bytes: &[u8]) -> Result<Document, StoreError> {
    let invalid = |reason: String| StoreError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut ids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for r in &doc.environments {
        if r.id.is_empty() || r.name.is_empty() || r.provider.is_empty() {
            return Err(invalid("a record has an empty id, name or provider".into()));
        }
        if !ids.insert(r.id.as_str()) {
            return Err(invalid(format!("duplicate id {:?}", r.id)));
        }
        if !names.insert(r.name.as_str()) {
            return Err(invalid(format!("duplicate name {:?}", r.name)));
        }
    }
    Ok(doc)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".environments.json.")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests;
