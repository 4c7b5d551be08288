//! Opening the store: the records file, then the journal entries it does not hold
//! (those numbered above its `journalSeq`, from `environments.journal.old` and then
//! `environments.journal`) replayed onto it, then one compaction so the file is
//! current and the journal empty.
//!
//! A torn last entry (the host died before its sync: never acknowledged) is cut off.
//! A damaged entry with good ones after it is skipped and reported (log, `/healthz`),
//! the good ones apply, and a copy of the journal is kept beside it for a person.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::document::Document;
use super::file::{Replaced, read_file, sha, write_unless_changed};
use super::journal::{self, Appender, Op, Scan};
use super::patch::{self, Dirty, Touch};
use super::{Changes, State, StoreError, invalid_file, log_held};

/// The state and journal of the records file at `path`, recovered.
pub(super) fn open(path: &Path) -> Result<(State, Appender), StoreError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| StoreError::Io { path: p, source }
    };
    let bytes = read_file(path)?;
    let (mut doc, invalid) = match Document::parse(&bytes) {
        Ok(doc) => (doc, None),
        Err(reason) => {
            let e = invalid_file(path, reason);
            tracing::error!(error = %e, "records file is invalid; starting with what the journal holds");
            (Document::default(), Some(e.to_string()))
        }
    };
    let active = journal::path_for(path);
    let old = journal::old_path(&active);
    let old_scan = journal::scan(&old, &journal::read(&old).map_err(io(&old))?);
    let active_scan = journal::scan(&active, &journal::read(&active).map_err(io(&active))?);
    let old_exists = old.exists();
    let had_entries = old_exists || !active_scan.entries.is_empty() || active_scan.torn.is_some();

    let (damage, torn) = problems(&old_scan, &active_scan);
    if let Some(torn) = &torn {
        tracing::warn!(%torn, "dropped a torn last journal entry (the host stopped before it was synced; it was never acknowledged)");
    }
    let damage = damage.map(|lines| keep_damaged(&lines, &[&old, &active]));
    if let Some(damage) = &damage {
        tracing::error!(%damage, "the records journal is damaged; its good entries are applied");
    }

    let file_seq = doc.journal_seq;
    let mut dirty = HashMap::new();
    let mut seq = file_seq;
    let entries = old_scan.entries.into_iter().chain(active_scan.entries);
    let mut applied = 0usize;
    for (n, op) in entries {
        if n <= seq {
            continue;
        }
        seq = n;
        let id = op.id().to_owned();
        let base = doc.find(&id).map(patch::fields_of);
        let mut touch = match &op {
            Op::Insert { .. } => Dirty::new(Touch::Inserted, None),
            Op::Update { fields, .. } => {
                let mut d = Dirty::new(Touch::Updated, base);
                d.fields = fields.keys().cloned().collect();
                d
            }
            Op::Remove { .. } => Dirty::new(Touch::Removed, base),
        };
        match doc.replay(op) {
            Ok(()) => {
                applied += 1;
                touch = match dirty.remove(&id) {
                    Some(before) => Dirty::then(before, touch),
                    None => touch,
                };
                dirty.insert(id, touch);
            }
            Err(why) => {
                tracing::warn!(entry = n, %why, "a journal entry does not apply to the records file as it is; the file wins")
            }
        }
    }
    if applied > 0 {
        tracing::info!(
            entries = applied,
            "replayed the records journal onto the records file"
        );
    }
    log_held(&doc);

    // Cut a torn tail off so the next append follows a whole entry.
    if active_scan.torn.is_some() {
        let file = crate::untrusted::open_to_write(&active, OpenOptions::new().write(true))
            .map_err(io(&active))?;
        file.set_len(active_scan.good_len).map_err(io(&active))?;
        file.sync_all().map_err(io(&active))?;
    }
    let mut state = State {
        doc,
        seq,
        unwritten: Vec::new(),
        compacted: file_seq,
        disk_sha: Some(sha(&bytes)),
        last_len: bytes.len(),
        invalid,
        journal_damage: damage,
        dirty,
        pending: Changes::default(),
        followed: None,
        last_cost: Duration::ZERO,
    };
    let mut appender_len = active_scan.good_len;
    let mut old_left = old_exists;
    // Compact now unless the file is broken (then its copy is kept at the first
    // compaction, as ever) or was edited since it was read (the watcher merges it).
    if had_entries && state.invalid.is_none() {
        let text = (state.doc.snapshot(seq))
            .to_bytes(bytes.len())
            .map_err(|e| invalid_file(path, e.to_string()))?;
        match write_unless_changed(path, &text, sha(&bytes))? {
            Replaced::Done => {
                journal::remove(&old).map_err(io(&old))?;
                let file = crate::untrusted::open_to_write(
                    &active,
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .mode(0o600),
                )
                .map_err(io(&active))?;
                file.set_len(0).map_err(io(&active))?;
                file.sync_all().map_err(io(&active))?;
                appender_len = 0;
                old_left = false;
                state.disk_sha = Some(sha(&text));
                state.last_len = text.len();
                state.compacted = seq;
                state.dirty.clear();
            }
            Replaced::Changed => {}
            // Edited as it was replaced: the edit goes back in place (the journal
            // stays, so the host's changes are merged onto it as ever).
            Replaced::Raced(theirs) => {
                crate::atomic::replace_file(path, &theirs).map_err(io(path))?
            }
        }
    }
    let file = journal::open_append(&active).map_err(io(&active))?;
    let appender = Appender {
        path: active,
        old,
        file: Arc::new(file),
        len: appender_len,
        old_exists: old_left,
        durable: seq,
        broken: None,
        cut_pending: false,
    };
    Ok((state, appender))
}

/// What was damaged (one line per entry) and what was torn off the end. Bad lines at
/// the end of the old journal count as damage when the active journal has entries.
fn problems(old: &Scan, active: &Scan) -> (Option<Vec<String>>, Option<String>) {
    let mut damaged: Vec<String> = old.damaged.clone();
    let mut torn = active.torn.clone();
    if let Some(old_torn) = &old.torn {
        if active.entries.is_empty() && torn.is_none() {
            torn = Some(old_torn.clone());
        } else {
            damaged.push(old_torn.clone());
        }
    }
    damaged.extend(active.damaged.iter().cloned());
    ((!damaged.is_empty()).then_some(damaged), torn)
}

/// One line for the log and `/healthz` about damaged entries, after keeping a copy of
/// each journal file beside it.
fn keep_damaged(lines: &[String], files: &[&Path]) -> String {
    let mut copies = Vec::new();
    for file in files {
        match journal::keep_copy(file) {
            Ok(Some(copy)) => copies.push(copy.display().to_string()),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(path = %file.display(), error = %e, "keeping a copy of the damaged journal failed")
            }
        }
    }
    let more = match lines.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    format!(
        "{} damaged journal entr{} skipped: {}{more}; the good entries are applied; a copy is kept as {}",
        lines.len(),
        if lines.len() == 1 { "y" } else { "ies" },
        lines[0],
        copies.join(", ")
    )
}
