//! Compaction: folding the journal into `environments.json`, in the background.
//!
//! A compaction (1) moves the journal aside to `environments.journal.old` and starts
//! a fresh one, so appends go on while it works; (2) reads the file and merges an
//! outside edit it has not seen; (3) writes memory, cut at the newest journal entry,
//! atomically as the file with that entry's number as `journalSeq`; (4) deletes the
//! old journal. A crash anywhere leaves a state a replay completes: before (3) the
//! old file and both journals hold everything; after (3) the file holds the old
//! journal's entries and a replay skips them by number; entries appended meanwhile
//! are in the fresh journal either way.
//!
//! It runs when the journal has been quiet for a while or grows past
//! [`JOURNAL_LIMIT`]; the wait scales with how long the last compaction took, so a
//! large file is rewritten less often and appends keep most of the disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::document::Document;
use super::file::Replaced;
use super::{MAX_MERGE_ROUNDS, Shared, StoreError, invalid_file, journal};
use crate::sync::MutexExt;

/// Journal size past which a compaction starts at once (it also bounds a replay).
pub(super) const JOURNAL_LIMIT: u64 = 16 * 1024 * 1024;
/// Shortest wait between the first uncompacted entry and a compaction.
const MIN_PACE: Duration = Duration::from_millis(50);
/// Longest wait.
const MAX_PACE: Duration = Duration::from_secs(5);
/// The wait, in multiples of the last compaction's duration.
const PACE_FACTOR: u32 = 4;
/// Wait after a failed compaction before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// Wakes the compaction task; it starts with the first journaled entry.
#[derive(Debug, Default)]
pub(super) struct Trigger {
    wake: Arc<Notify>,
    urgent: Arc<Notify>,
    started: AtomicBool,
    closed: Arc<AtomicBool>,
    /// Tests: the compaction step after which a compaction stops as if the host died.
    #[cfg(test)]
    pub(super) crash_after: std::sync::Mutex<Option<Step>>,
}

/// A compaction step (tests stop a compaction after one, as a crash would).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The journal moved aside.
    Cut,
    /// The file written.
    Write,
}

impl Trigger {
    /// There are journal entries to compact; `over` says the journal is past its limit.
    pub(super) fn poke(&self, shared: &Arc<Shared>, over: bool) {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(run(
                Arc::downgrade(shared),
                self.wake.clone(),
                self.urgent.clone(),
                self.closed.clone(),
            ));
        }
        self.wake.notify_one();
        if over {
            self.urgent.notify_one();
        }
    }

    /// The store is gone: the task ends.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        self.urgent.notify_one();
    }
}

async fn run(
    shared: Weak<Shared>,
    wake: Arc<Notify>,
    urgent: Arc<Notify>,
    closed: Arc<AtomicBool>,
) {
    loop {
        wake.notified().await;
        let pace = match shared.upgrade() {
            Some(s) if !closed.load(Ordering::SeqCst) => s.pace(),
            _ => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(pace) => {}
            _ = urgent.notified() => {}
        }
        let Some(s) = shared.upgrade() else { return };
        if closed.load(Ordering::SeqCst) {
            return;
        }
        let started = Instant::now();
        // A faulted journal is retried here too, so it recovers without a mutation.
        let done = match s.recover().await {
            Ok(()) => s.compact().await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                s.with(|st| st.last_cost = started.elapsed());
                s.compaction_done();
            }
            Err(e) => {
                s.compaction_failed(&e);
                drop(s);
                tokio::time::sleep(RETRY).await;
                wake.notify_one();
            }
        }
    }
}

impl Shared {
    /// A compaction worked: a storage fault of the records file is over.
    fn compaction_done(&self) {
        if let Some(fault) = self.faults.locked().compaction.take() {
            tracing::info!(path = %fault.path.display(), "the records file is written again");
        }
    }

    /// Logs a failed compaction (once per kind of failure, not at every retry) and
    /// keeps a storage failure for `/healthz`.
    fn compaction_failed(&self, e: &StoreError) {
        let mut faults = self.faults.locked();
        let fault = match e {
            StoreError::Io { path, source } => {
                Some(super::Fault::new(path, source, faults.compaction.as_ref()))
            }
            // The journal's own fault is kept where it was noted.
            StoreError::Storage { .. } => return,
            _ => None,
        };
        let repeated = fault.as_ref().is_some_and(|f| {
            faults
                .compaction
                .as_ref()
                .is_some_and(|before| before.problem == f.problem && before.path == f.path)
        });
        if !repeated {
            tracing::error!(error = %e, "compacting the records journal failed; its entries stay in the journal and it is tried again every second");
        }
        faults.compaction = fault;
    }

    #[cfg(test)]
    fn crashes_after(&self, step: Step) -> bool {
        *self
            .trigger
            .crash_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            == Some(step)
    }

    /// How long to wait before the next compaction.
    fn pace(&self) -> Duration {
        self.with(|s| s.last_cost * PACE_FACTOR)
            .clamp(MIN_PACE, MAX_PACE)
    }

    /// Writes memory to the file, cut at the newest journal entry, and drops the
    /// journal entries the file then holds. Nothing to do when the file holds them.
    pub(super) async fn compact(&self) -> Result<(), StoreError> {
        let _compaction = self.compaction.lock().await;
        if self.with(|s| s.seq <= s.compacted) {
            // Every entry is in the file.
            self.drop_old_journal().await;
            self.trim_journal().await;
            return Ok(());
        }
        self.cut_journal().await?;
        #[cfg(test)]
        if self.crashes_after(Step::Cut) {
            return Ok(());
        }
        for _ in 0..MAX_MERGE_ROUNDS {
            let (seen, parsed) = self.read_settled().await?;
            let (cut, snapshot, keep_invalid, dirty, hint) = self.with(|s| {
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
                (
                    s.seq,
                    s.doc.snapshot(s.seq),
                    s.invalid.is_some(),
                    std::mem::take(&mut s.dirty),
                    s.last_len,
                )
            });
            let path = self.path.clone();
            let written = tokio::task::spawn_blocking(move || {
                let bytes = snapshot.to_bytes(hint).map_err(|e| StoreError::Invalid {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                if keep_invalid {
                    super::file::keep_copy(&path)?;
                }
                let replaced = super::file::write_unless_changed(&path, &bytes, seen)?;
                Ok::<_, StoreError>((replaced, super::file::sha(&bytes), bytes.len()))
            })
            .await
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })
            .and_then(|r| r);
            match written {
                Ok((Replaced::Done, digest, len)) => {
                    self.with(|s| {
                        s.disk_sha = Some(digest);
                        s.invalid = None;
                        s.last_len = len;
                        s.compacted = cut;
                    });
                    #[cfg(test)]
                    if self.crashes_after(Step::Write) {
                        return Ok(());
                    }
                    self.drop_old_journal().await;
                    return Ok(());
                }
                // Edited between the read and the check: read and merge again.
                Ok((Replaced::Changed, _, _)) => self.with(|s| s.restore(dirty)),
                // Edited in the instant before the swap: the file holds memory as cut,
                // and the edit is merged now and written in the next round.
                Ok((Replaced::Raced(theirs), digest, len)) => {
                    tracing::info!(
                        "an outside edit landed as the records file was replaced; merging it"
                    );
                    let parsed = Document::parse(&theirs);
                    if parsed.is_err() {
                        super::file::keep_text(&self.path, &theirs)?;
                    }
                    self.with(|s| {
                        s.restore(dirty);
                        s.disk_sha = Some(digest);
                        s.invalid = None;
                        s.last_len = len;
                        // `compacted` stays behind `cut`, so a compaction writes the
                        // merge even if this one gives up.
                        if let Ok(file) = parsed {
                            s.absorb_file(file);
                        }
                    });
                }
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

    /// Step (1): appends go to a fresh journal from here on. Skipped while an old
    /// journal is still there (a compaction before failed after its cut): the next
    /// file written holds its entries all the same.
    async fn cut_journal(&self) -> Result<(), StoreError> {
        let mut j = self.journal.lock().await;
        if j.old_exists || j.len == 0 {
            return Ok(());
        }
        let (path, old) = (j.path.clone(), j.old.clone());
        let rotated = tokio::task::spawn_blocking(move || journal::rotate(&path, &old))
            .await
            .map_err(|e| StoreError::Io {
                path: j.path.clone(),
                source: std::io::Error::other(e),
            })?;
        match rotated {
            Ok(file) => {
                j.file = Arc::new(file);
                j.len = 0;
                j.old_exists = true;
                Ok(())
            }
            Err(e) => {
                if !e.restored {
                    // Appends would go to a file the next compaction deletes.
                    j.broken = Some(format!(
                        "moving the journal aside failed half-way ({}) and could not be undone; restart the host",
                        e.error
                    ));
                }
                Err(StoreError::Io {
                    path: j.path.clone(),
                    source: e.error,
                })
            }
        }
    }

    /// Empties a journal whose every entry the file holds (entries made before a
    /// cut but appended after it), so it does not wait for the next mutation.
    async fn trim_journal(&self) {
        let mut j = self.journal.lock().await;
        let compacted = self.with(|s| (s.unwritten.is_empty()).then_some(s.compacted));
        if j.len == 0 || j.old_exists || compacted.is_none_or(|c| j.durable > c) {
            return;
        }
        let file = j.file.clone();
        match tokio::task::spawn_blocking(move || file.set_len(0).and_then(|()| file.sync_all()))
            .await
        {
            Ok(Ok(())) => j.len = 0,
            Ok(Err(e)) => {
                tracing::warn!(path = %j.path.display(), error = %e, "emptying the compacted journal failed")
            }
            Err(e) => {
                tracing::warn!(path = %j.path.display(), error = %e, "emptying the compacted journal failed")
            }
        }
    }

    /// Step (4): the old journal's entries are in the file now.
    async fn drop_old_journal(&self) {
        let mut j = self.journal.lock().await;
        if !j.old_exists {
            return;
        }
        let old = j.old.clone();
        match tokio::task::spawn_blocking(move || journal::remove(&old)).await {
            Ok(Ok(())) => j.old_exists = false,
            // It stays; a replay skips its entries by number, the next compaction
            // tries again.
            Ok(Err(e)) => {
                tracing::warn!(path = %j.old.display(), error = %e, "removing the compacted journal failed")
            }
            Err(e) => {
                tracing::warn!(path = %j.old.display(), error = %e, "removing the compacted journal failed")
            }
        }
    }
}
