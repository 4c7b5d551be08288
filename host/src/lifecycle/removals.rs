//! Removals still to make: `.codebolt/removals.json`, a small durable journal of
//! deleted environments whose provider failed to remove the resource (an error, a
//! timeout, no instance to call). Each entry keeps the deleted record (what a fresh
//! instance of the provider needs: provider, `resourceId`, config, name, state), the
//! attempts so far, the last error and when the next attempt is due; the retry task
//! (`retry_removals`) works through them.
//!
//! The file is rewritten atomically (`crate::atomic`) on every change. It is read
//! once at start, with the rules of a hand edit: each entry is checked on its own (its
//! record by `store::validate`, every string bounded) and a bad one is skipped with a
//! log line; a file that is not JSON or too large is skipped whole. Either way its text
//! is copied to `removals.json.rejected-<unix time>` before the host writes over it,
//! so nothing is lost. At start every entry is due at once: a restart is often what
//! fixed the cause (a provider upgraded, a key corrected).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Record, validate};
use crate::sync::MutexExt;
use crate::untrusted;

/// Most entries kept; a failure past it is logged (remove it by hand) and counted.
pub(super) const MAX_ENTRIES: usize = 1000;
/// Largest file read or written.
pub(super) const MAX_FILE_BYTES: usize = 32 * 1024 * 1024;
/// Longest `lastError` kept (cut to it).
const MAX_ERROR_BYTES: usize = 2048;
/// Longest timestamp field.
const MAX_STAMP_BYTES: usize = 64;
/// The longest wait between two attempts.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Why the journal could not be written.
#[derive(Debug, thiserror::Error)]
pub(super) enum RemovalsError {
    /// It holds [`MAX_ENTRIES`] entries or [`MAX_FILE_BYTES`] bytes already.
    #[error("the removals journal is full ({0})")]
    Full(String),
    /// The file could not be written.
    #[error("writing {path}: {error}")]
    Write {
        /// The journal's path.
        path: String,
        /// What the operating system said.
        error: std::io::Error,
    },
}

/// One pending removal as the file holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Pending {
    /// The deleted record.
    pub(super) record: Record,
    /// Attempts that failed so far (the delete's own included).
    pub(super) attempts: u32,
    /// What the last attempt said, safe for a log line.
    pub(super) last_error: String,
    /// When the first attempt failed (RFC 3339).
    pub(super) failed_at: String,
    /// When the next attempt is due (RFC 3339), for people reading the file.
    pub(super) next_attempt_at: String,
}

/// The file's shape.
#[derive(Debug, Serialize)]
struct File<'a> {
    version: u32,
    removals: Vec<&'a Pending>,
}

#[derive(Debug)]
struct Entry {
    pending: Pending,
    due: Instant,
}

impl Entry {
    /// The entry with `nextAttemptAt` as memory has it: a start, or an operator's
    /// "try it now", makes it due sooner than the file says (now, when it is due).
    fn shown(&self) -> Pending {
        let mut pending = self.pending.clone();
        pending.next_attempt_at = stamp_in(self.due.saturating_duration_since(Instant::now()));
        pending
    }
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    /// Entries an attempt is working on now (taken by [`Removals::take_due`]).
    in_flight: BTreeSet<String>,
    /// Failed removals that could not be journaled since start.
    not_kept: u64,
    /// What was wrong with the file at start, if anything.
    load_problem: Option<String>,
}

/// What `/healthz` says of the journal.
#[derive(Debug, Clone, Default)]
pub(super) struct RemovalsHealth {
    pub(super) pending: usize,
    pub(super) reasons: Vec<String>,
}

/// The journal: the entries in memory, every change written through to the file.
#[derive(Debug)]
pub(super) struct Removals {
    path: PathBuf,
    state: Mutex<State>,
}

/// How long after failed attempt number `attempts` (1-based) the next is due: `base`
/// doubling, at most [`MAX_DELAY`].
pub(super) fn delay(base: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << doublings).min(MAX_DELAY)
}

/// The moment `after` from now, as the journal shows it.
fn stamp_in(after: Duration) -> String {
    crate::store::stamp(time::OffsetDateTime::now_utc() + after)
}

impl Removals {
    /// The journal at `path`, read now (see the module's comment for a bad file).
    pub(super) fn open(path: PathBuf) -> Self {
        let mut state = State::default();
        match read(&path) {
            Ok(None) => {}
            Ok(Some(text)) => {
                let (entries, problems) = parse(&text);
                for p in &problems {
                    tracing::error!(path = %path.display(), problem = %p, "removals journal: an entry is skipped");
                }
                let now = Instant::now();
                for pending in entries {
                    tracing::info!(env = %pending.record.id, attempts = pending.attempts, "removals journal: a deleted environment's resource is still to remove");
                    let id = pending.record.id.clone();
                    state.entries.insert(id, Entry { pending, due: now });
                }
                if !problems.is_empty() {
                    state.load_problem = Some(format!(
                        "{} entr{} skipped ({}; see the log)",
                        problems.len(),
                        if problems.len() == 1 { "y" } else { "ies" },
                        problems[0]
                    ));
                    keep_rejected(&path, text.as_bytes());
                }
            }
            Err(Unusable { why, bytes }) => {
                tracing::error!(path = %path.display(), problem = %why, "removals journal: the file is skipped; no removal is retried from it");
                state.load_problem = Some(why);
                match bytes {
                    Some(bytes) => keep_rejected(&path, &bytes),
                    None => move_rejected(&path),
                }
            }
        }
        Self {
            path,
            state: Mutex::new(state),
        }
    }

    /// Notes that removing `record`'s resource failed with `error`: a new entry, or the
    /// next attempt of one, due after the backoff from `base`.
    pub(super) fn failed(
        &self,
        record: &Record,
        error: &str,
        base: Duration,
    ) -> Result<(u32, Duration), RemovalsError> {
        let mut state = self.state.locked();
        self.note_failure(&mut state, record, error, base)
    }

    /// [`Removals::failed`] for a retry: `None` when the entry is no longer there (an
    /// operator dropped it while the attempt ran), which it then stays.
    pub(super) fn failed_again(
        &self,
        record: &Record,
        error: &str,
        base: Duration,
    ) -> Result<Option<(u32, Duration)>, RemovalsError> {
        let mut state = self.state.locked();
        if !state.entries.contains_key(&record.id) {
            return Ok(None);
        }
        self.note_failure(&mut state, record, error, base).map(Some)
    }

    fn note_failure(
        &self,
        state: &mut State,
        record: &Record,
        error: &str,
        base: Duration,
    ) -> Result<(u32, Duration), RemovalsError> {
        let error = untrusted::cut(&untrusted::logged(error), MAX_ERROR_BYTES);
        let before = state.entries.get(&record.id).map(|e| e.pending.clone());
        let attempts = before.as_ref().map_or(0, |p| p.attempts).saturating_add(1);
        let wait = delay(base, attempts);
        if before.is_none() && state.entries.len() >= MAX_ENTRIES {
            state.not_kept += 1;
            return Err(RemovalsError::Full(format!("{MAX_ENTRIES} entries")));
        }
        let pending = Pending {
            record: record.clone(),
            attempts,
            last_error: error,
            failed_at: before.map_or_else(crate::store::now, |p| p.failed_at),
            next_attempt_at: stamp_in(wait),
        };
        let entry = Entry {
            pending,
            due: Instant::now() + wait,
        };
        let old = state.entries.insert(record.id.clone(), entry);
        if let Err(e) = self.write(state) {
            // Memory stays as the file is.
            match old {
                Some(old) => state.entries.insert(record.id.clone(), old),
                None => state.entries.remove(&record.id),
            };
            state.not_kept += 1;
            return Err(e);
        }
        Ok((attempts, wait))
    }

    /// The resource of `id` is removed, or an operator says it need not be: its entry
    /// goes. The entry as it was; `None` when there was none.
    pub(super) fn done(&self, id: &str) -> Result<Option<Pending>, RemovalsError> {
        let mut state = self.state.locked();
        let Some(old) = state.entries.remove(id) else {
            return Ok(None);
        };
        if let Err(e) = self.write(&state) {
            state.entries.insert(id.to_owned(), old);
            return Err(e);
        }
        Ok(Some(old.pending))
    }

    /// Leaves `id` for `after` without counting an attempt (the host is shutting down,
    /// say, or nothing could be tried); `false` when there is no such entry.
    pub(super) fn postpone(&self, id: &str, after: Duration) -> bool {
        let mut state = self.state.locked();
        let Some(entry) = state.entries.get_mut(id) else {
            return false;
        };
        entry.due = Instant::now() + after;
        true
    }

    /// Takes the entries due now, oldest due first, for attempts: as many as keep at
    /// most `at_once` in flight, none already in one. Each stays in flight until
    /// [`Removals::release`].
    pub(super) fn take_due(&self, at_once: usize) -> Vec<Pending> {
        let now = Instant::now();
        let mut state = self.state.locked();
        let room = at_once.saturating_sub(state.in_flight.len());
        let mut due: Vec<(&Instant, &Pending)> = (state.entries.iter())
            .filter(|(id, e)| e.due <= now && !state.in_flight.contains(*id))
            .map(|(_, e)| (&e.due, &e.pending))
            .collect();
        due.sort_by_key(|(at, _)| **at);
        let taken: Vec<Pending> = (due.into_iter().take(room))
            .map(|(_, p)| p.clone())
            .collect();
        for pending in &taken {
            state.in_flight.insert(pending.record.id.clone());
        }
        taken
    }

    /// The attempt on `id` is over, whatever it did.
    pub(super) fn release(&self, id: &str) {
        self.state.locked().in_flight.remove(id);
    }

    /// Every entry, by environment id, and whether an attempt is working on it now.
    pub(super) fn list(&self) -> Vec<(Pending, bool)> {
        let state = self.state.locked();
        (state.entries.iter())
            .map(|(id, e)| (e.shown(), state.in_flight.contains(id)))
            .collect()
    }

    /// One entry, and whether an attempt is working on it now.
    pub(super) fn get(&self, id: &str) -> Option<(Pending, bool)> {
        let state = self.state.locked();
        let entry = state.entries.get(id)?;
        Some((entry.shown(), state.in_flight.contains(id)))
    }

    /// How many removals are pending.
    pub(super) fn pending(&self) -> usize {
        self.state.locked().entries.len()
    }

    /// What `/healthz` shows of the journal.
    pub(super) fn health(&self) -> RemovalsHealth {
        let state = self.state.locked();
        let mut reasons = Vec::new();
        let pending = state.entries.len();
        if pending > 0 {
            let most = (state.entries.values()).max_by_key(|e| e.pending.attempts);
            let (attempts, error) = most.map_or((0, ""), |e| {
                (e.pending.attempts, e.pending.last_error.as_str())
            });
            reasons.push(format!(
                "removals: {pending} {} still to remove, retried in the background (most attempts: {attempts}; last error: {})",
                if pending == 1 {
                    "deleted environment's resource"
                } else {
                    "deleted environments' resources"
                },
                untrusted::shown(error, 300)
            ));
        }
        if state.not_kept > 0 {
            reasons.push(format!(
                "removals: {} failed removal{} could not be kept in the journal; remove them by hand (see the log)",
                state.not_kept,
                if state.not_kept == 1 { "" } else { "s" }
            ));
        }
        if let Some(problem) = &state.load_problem {
            reasons.push(format!("removals journal: {problem}"));
        }
        RemovalsHealth { pending, reasons }
    }

    fn write(&self, state: &State) -> Result<(), RemovalsError> {
        let file = File {
            version: 1,
            removals: state.entries.values().map(|e| &e.pending).collect(),
        };
        let write_error = |error| RemovalsError::Write {
            path: self.path.display().to_string(),
            error,
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| write_error(std::io::Error::other(e)))?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(RemovalsError::Full(format!("{MAX_FILE_BYTES} bytes")));
        }
        crate::atomic::replace_file(&self.path, &bytes).map_err(write_error)
    }
}

/// Why the file cannot be used at all, with its bytes when they were read.
struct Unusable {
    why: String,
    bytes: Option<Vec<u8>>,
}

/// The file's text; `None` when there is none; `Err` when it cannot be used at all.
/// Only a regular file is opened (a named pipe would hold the start waiting for a
/// writer), and no more than [`MAX_FILE_BYTES`] of it is read.
fn read(path: &Path) -> Result<Option<String>, Unusable> {
    let unread = |why: String| Unusable { why, bytes: None };
    let file = match crate::untrusted::open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unread(format!("reading it failed: {e}"))),
    };
    let bytes = match crate::untrusted::read_at_most(file, MAX_FILE_BYTES as u64) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            return Err(unread(format!(
                "it is larger than the limit, {MAX_FILE_BYTES} bytes; it was not read"
            )));
        }
        Err(e) => return Err(unread(format!("reading it failed: {e}"))),
    };
    String::from_utf8(bytes).map(Some).map_err(|e| Unusable {
        why: "it is not UTF-8".to_owned(),
        bytes: Some(e.into_bytes()),
    })
}

/// The good entries of the file's text, and what was wrong with the others.
pub(super) fn parse(text: &str) -> (Vec<Pending>, Vec<String>) {
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (Vec::new(), vec![validate::clean(&format!("not JSON: {e}"))]),
    };
    let Some(list) = doc.get("removals").and_then(Value::as_array) else {
        return (
            Vec::new(),
            vec!["no \"removals\" list at the top level".to_owned()],
        );
    };
    let (mut good, mut bad) = (Vec::<Pending>::new(), Vec::new());
    for (i, raw) in list.iter().enumerate() {
        if good.len() >= MAX_ENTRIES {
            bad.push(format!(
                "entries past the first {MAX_ENTRIES} ({} more)",
                list.len() - i
            ));
            break;
        }
        match entry(raw) {
            Ok(p) if good.iter().any(|g| g.record.id == p.record.id) => bad.push(format!(
                "entry {i}: a second entry for {}",
                untrusted::named(&p.record.id)
            )),
            Ok(p) => good.push(p),
            Err(why) => bad.push(format!("entry {i}: {why}")),
        }
    }
    (good, bad)
}

/// One entry checked like a hand-edited record.
fn entry(raw: &Value) -> Result<Pending, String> {
    if let Some(record) = raw.get("record") {
        validate::check_raw_size(record)?;
    }
    for field in ["lastError", "failedAt", "nextAttemptAt"] {
        let max = if field == "lastError" {
            MAX_ERROR_BYTES * 2
        } else {
            MAX_STAMP_BYTES
        };
        match raw.get(field).and_then(Value::as_str) {
            Some(s) if s.len() > max => {
                return Err(format!("{field} is {} bytes; the limit is {max}", s.len()));
            }
            _ => {}
        }
    }
    let mut pending: Pending = serde_json::from_value(raw.clone())
        .map_err(|e| validate::clean(&format!("not an entry: {e}")))?;
    validate::check(&pending.record)?;
    if pending
        .record
        .resource_id
        .as_deref()
        .is_none_or(str::is_empty)
    {
        return Err("the record names no resourceId: there is nothing to remove".to_owned());
    }
    // Shown in logs and `/healthz`: kept in the form every log line has.
    pending.last_error = untrusted::cut(&untrusted::logged(&pending.last_error), MAX_ERROR_BYTES);
    Ok(pending)
}

/// [`keep_rejected`] for a file that was not read: moved aside whole.
fn move_rejected(path: &Path) {
    match crate::atomic::move_beside(path, "rejected") {
        Ok(Some(moved)) => {
            tracing::warn!(moved = %moved.display(), "removals journal: the file is moved there before the host writes a new one")
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "removals journal: could not move it aside")
        }
    }
}

/// Keeps a file the host will write over: copied beside it, named for the moment.
fn keep_rejected(path: &Path, bytes: &[u8]) {
    match crate::atomic::keep_beside(path, "rejected", bytes) {
        Ok(copy) => {
            tracing::warn!(copy = %copy.display(), "removals journal: its text is kept there before the host writes over it")
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "removals journal: could not keep its text")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str) -> Value {
        json!({
            "id": id, "name": format!("n-{id}"), "provider": "http-sandbox", "owner": "admin",
            "config": {"a": 1}, "resourceId": "sbx-1", "desiredState": "stopped",
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"
        })
    }

    fn pending(id: &str) -> Value {
        json!({"record": record(id), "attempts": 2, "lastError": "HTTP 500",
               "failedAt": "2026-01-01T00:00:00Z", "nextAttemptAt": "2026-01-01T00:01:00Z"})
    }

    #[test]
    fn good_entries_are_read_and_bad_ones_skipped_alone() {
        let mut path_like = pending("b");
        path_like["record"]["name"] = json!("../../etc");
        let mut huge = pending("c");
        huge["lastError"] = json!("x".repeat(1 << 20));
        let mut huge_config = pending("d");
        huge_config["record"]["config"] = json!({"k": "y".repeat(3 << 20)});
        let mut newline_id = pending("e");
        newline_id["record"]["id"] = json!("e\nf");
        let mut no_resource = pending("f");
        no_resource["record"]["resourceId"] = json!(null);
        let doc = json!({"version": 1, "removals": [
            pending("a"), path_like, huge, huge_config, newline_id, no_resource, 7, pending("a"), pending("z")
        ]});
        let (good, bad) = parse(&doc.to_string());
        let ids: Vec<&str> = good.iter().map(|p| p.record.id.as_str()).collect();
        assert_eq!(ids, ["a", "z"]);
        assert_eq!(bad.len(), 7, "{bad:?}");
        assert!(bad.iter().all(|b| b.len() < 600), "{bad:?}");
        assert_eq!(good[0].attempts, 2);
        assert_eq!(good[0].record.resource_id.as_deref(), Some("sbx-1"));
    }

    #[test]
    fn a_file_that_is_not_the_shape_yields_nothing_and_one_reason() {
        for text in ["not json", "[]", "{\"removals\": 3}", ""] {
            let (good, bad) = parse(text);
            assert!(good.is_empty());
            assert_eq!(bad.len(), 1, "{text}: {bad:?}");
        }
    }

    #[test]
    fn entries_past_the_bound_are_skipped() {
        let list: Vec<Value> = (0..MAX_ENTRIES + 5)
            .map(|i| pending(&format!("e{i}")))
            .collect();
        let (good, bad) = parse(&json!({"removals": list}).to_string());
        assert_eq!(good.len(), MAX_ENTRIES);
        assert_eq!(bad.len(), 1, "{bad:?}");
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(30);
        assert_eq!(delay(base, 1), base);
        assert_eq!(delay(base, 2), Duration::from_secs(60));
        assert_eq!(delay(base, 8), MAX_DELAY);
        assert_eq!(delay(base, u32::MAX), MAX_DELAY);
    }

    #[test]
    fn attempts_take_due_entries_once_each_and_at_most_so_many_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Removals::open(dir.path().join("removals.json"));
        let base = Duration::from_secs(30);
        for id in ["a", "b", "c"] {
            let rec: Record = serde_json::from_value(record(id)).expect("record");
            journal.failed(&rec, "boom", base).expect("kept");
            assert!(journal.postpone(id, Duration::ZERO));
        }
        assert!(!journal.postpone("nobody", Duration::ZERO));
        let first = journal.take_due(2);
        assert_eq!(first.len(), 2);
        // In flight: not taken again, and they fill the room.
        assert!(journal.take_due(2).is_empty());
        let in_flight = journal.list().into_iter().filter(|(_, busy)| *busy).count();
        assert_eq!(in_flight, 2);
        journal.release(&first[0].record.id);
        let next = journal.take_due(2);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].record.id, first[1].record.id);

        // Dropped while its attempt ran: the attempt's failure does not bring it back.
        let dropped = first[1].record.clone();
        assert!(journal.done(&dropped.id).expect("written").is_some());
        assert!(
            journal
                .failed_again(&dropped, "late", base)
                .expect("ok")
                .is_none()
        );
        assert!(journal.get(&dropped.id).is_none());
        assert_eq!(journal.pending(), 2);
        let again = journal.failed_again(&next[0].record, "again", base);
        assert_eq!(again.expect("written").map(|(n, _)| n), Some(2));
    }

    #[test]
    fn the_journal_survives_a_reopen_and_keeps_a_broken_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("removals.json");
        let journal = Removals::open(path.clone());
        let rec: Record = serde_json::from_value(record("a")).expect("record");
        let base = Duration::from_secs(30);
        assert_eq!(
            journal.failed(&rec, "boom\nagain", base).expect("kept").0,
            1
        );
        assert_eq!(journal.failed(&rec, "boom", base).expect("kept").0, 2);
        assert!(journal.take_due(4).is_empty(), "not due before its backoff");
        let reopened = Removals::open(path.clone());
        assert_eq!(reopened.pending(), 1);
        let due = reopened.take_due(4);
        assert_eq!(due.len(), 1, "due at once after a start");
        assert_eq!(due[0].attempts, 2);
        reopened.done("a").expect("written");
        assert_eq!(Removals::open(path.clone()).pending(), 0);

        std::fs::write(&path, b"{broken").expect("write");
        let broken = Removals::open(path.clone());
        assert_eq!(broken.pending(), 0);
        assert_eq!(broken.health().reasons.len(), 1);
        let kept = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("removals.json.rejected-")
            });
        assert!(kept, "the broken text is kept");
    }
}
