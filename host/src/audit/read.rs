//! Reading the log back: the newest entries matching a query, across the rotated
//! files, newest file first, stopping as soon as enough are found. A line that does
//! not parse (torn by a crash, or edited by hand) is skipped.

use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::entry::Entry;
use super::file;

/// Which entries [`super::AuditLog::query`] returns.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only entries at or after this time.
    pub since: Option<OffsetDateTime>,
    /// At most this many (the newest); capped at [`MAX_LIMIT`], 0 means the cap.
    pub limit: usize,
    /// Only entries about this user: they own the target or did it.
    pub owner: Option<String>,
}

/// Most entries one query returns.
pub const MAX_LIMIT: usize = 10_000;

impl Query {
    fn limit(&self) -> usize {
        match self.limit {
            0 => MAX_LIMIT,
            n => n.min(MAX_LIMIT),
        }
    }

    fn matches(&self, e: &Entry) -> bool {
        self.since.is_none_or(|t| e.time.get() >= t)
            && self.owner.as_deref().is_none_or(|o| e.concerns(o))
    }
}

/// The newest entries matching `q`, oldest first.
pub(super) fn query(
    path: &Path,
    keep: usize,
    files: &Mutex<()>,
    q: &Query,
) -> std::io::Result<Vec<Entry>> {
    let limit = q.limit();
    let mut newest_first = Vec::new();
    let mut skipped = 0usize;
    for mut f in file::open_all(path, keep, files)? {
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        let mut older_than_since = false;
        for line in bytes.split(|b| *b == b'\n').rev() {
            if line.is_empty() {
                continue;
            }
            let Ok(e) = serde_json::from_slice::<Entry>(line) else {
                skipped += 1;
                continue;
            };
            if q.since.is_some_and(|t| e.time.get() < t) {
                // Lines are written in about time order (stamped just before
                // queueing); finish this file in case of a tiny inversion, but older
                // files hold nothing newer.
                older_than_since = true;
                continue;
            }
            if q.matches(&e) {
                newest_first.push(e);
                if newest_first.len() >= limit {
                    break;
                }
            }
        }
        if newest_first.len() >= limit || older_than_since {
            break;
        }
    }
    if skipped > 0 {
        tracing::debug!(skipped, "skipped audit lines that do not parse");
    }
    newest_first.reverse();
    Ok(newest_first)
}
