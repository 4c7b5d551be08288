//! The audit log (issue 12, item 7): append-only JSON lines in `.codebolt/audit.jsonl`,
//! one [`Entry`] a line — who did what to which target, how it ended and why — rotated
//! by size into `audit.jsonl.1` … `.N` (`[audit]` in `tether.toml`).
//!
//! Two ways in. [`AuditLog::record`] returns once the line is durable (fsync'd), for
//! every mutation: the caller records before it acknowledges, so an acknowledged
//! mutation is never missing from the log after a crash. [`AuditLog::note`] queues and
//! returns at once, for high-volume events (refused authentication): those may be lost
//! in a crash, and a flood of them is sampled (`sample`). Either way the writing is a
//! thread of its own doing group commit (`writer`): concurrent callers share one write
//! and one fsync, so the API does not wait on the disk once per entry.
//!
//! An entry cannot carry a secret: its strings are [`Text`], which redacts anything
//! that looks like a token and keeps each entry on one bounded line. [`AuditLog::query`]
//! reads the newest entries back across the rotated files (`read`). The log stays
//! open for the host's life; [`AuditLog::close`] writes what is queued and stops the
//! thread.

mod entry;
mod file;
mod read;
mod sample;
mod text;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

pub use entry::{Actor, Entry, Outcome, Timestamp, action};
pub use read::{MAX_LIMIT, Query};
pub use text::{MAX_TEXT, Text};

use crate::config::AuditConfig;
use crate::sync::MutexExt;
use file::LogFile;
use sample::Sampler;
use writer::{Msg, Shared};

/// Notes queued at most; beyond it a note is dropped and counted, so a flood cannot
/// grow the host's memory while the disk is slow.
const MAX_QUEUED_NOTES: usize = 8192;

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Opening or reading the log failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Writing the entry failed; it is not durable.
    #[error("writing the audit log {path}: {reason}")]
    Write {
        /// The log file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The log was closed.
    #[error("the audit log is closed")]
    Closed,
}

/// The audit log; clone it freely (a handle onto one writer thread).
#[derive(Debug, Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    keep: usize,
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    /// Held while rotating, and while a query opens the files.
    files: Arc<Mutex<()>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens (or starts) the log at `path` and its writer thread.
    pub fn open(path: &Path, config: &AuditConfig) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_owned(),
            source,
        };
        let files = Arc::new(Mutex::new(()));
        let file = LogFile::open(
            path,
            config.max_file_bytes,
            config.keep_files,
            files.clone(),
        )
        .map_err(io)?;
        let shared = Arc::new(Shared {
            sampler: Mutex::new(Sampler::new(config.sampled_per_second)),
            queued_notes: AtomicUsize::new(0),
            syncs: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer::run(file, rx, for_thread))
            .map_err(io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                keep: config.keep_files,
                tx,
                shared,
                files,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Writes `entry` and returns once it is durable. Call it before acknowledging
    /// the mutation it records.
    pub async fn record(&self, entry: Entry) -> Result<(), AuditError> {
        let line = self.encode(&entry)?;
        let (done, durable) = oneshot::channel();
        (self.inner.tx)
            .send(Msg::Line(line, Some(done)))
            .map_err(|_| AuditError::Closed)?;
        match durable.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(AuditError::Write {
                path: self.inner.path.clone(),
                reason,
            }),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// Queues `entry` without waiting: lost if the host crashes before the next write,
    /// and sampled when one action from one address floods in.
    pub fn note(&self, entry: Entry) {
        self.note_at(entry, Instant::now());
    }

    fn note_at(&self, entry: Entry, now: Instant) {
        let mut lines = Vec::new();
        {
            let mut sampler = self.inner.shared.sampler.locked();
            if sampler.admit(&entry, now, &mut lines) {
                lines.push(entry);
            }
        }
        for e in lines {
            let queued = &self.inner.shared.queued_notes;
            if queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_NOTES {
                queued.fetch_sub(1, Ordering::Relaxed);
                self.inner.shared.sampler.locked().dropped();
                continue;
            }
            let sent = match self.encode(&e) {
                Ok(line) => self.inner.tx.send(Msg::Line(line, None)).is_ok(),
                Err(_) => false,
            };
            if !sent {
                queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The newest entries matching `q`, oldest first, across the rotated files.
    pub async fn query(&self, q: Query) -> Result<Vec<Entry>, AuditError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || read::query(&inner.path, inner.keep, &inner.files, &q))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| {
                // The client is told the kind of failure only; the operator, what.
                tracing::error!(error = %source, "reading the audit log failed");
                AuditError::Io {
                    path: self.inner.path.clone(),
                    source,
                }
            })
    }

    /// Writes what is queued (and pending summaries), then stops the writer thread.
    /// Later calls to `record` fail with [`AuditError::Closed`]; closing twice is fine.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(done)).is_ok() {
            let _ = closed.await;
        }
        let thread = self.inner.thread.locked().take();
        if let Some(thread) = thread {
            // The thread has answered and only returns now; joining makes sure.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Durable writes made so far (each covers every line queued while the previous
    /// one ran): lines divided by this is the batching factor.
    pub fn syncs(&self) -> u64 {
        self.inner.shared.syncs.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.inner.shared.lines.load(Ordering::Relaxed)
    }

    /// Lines the log could not take (a full or read-only disk) since start: each
    /// awaited one failed its request, each note was lost.
    pub fn failed_lines(&self) -> u64 {
        self.inner.shared.failed.load(Ordering::Relaxed)
    }

    fn encode(&self, entry: &Entry) -> Result<Vec<u8>, AuditError> {
        entry.line().map_err(|e| AuditError::Write {
            path: self.inner.path.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
