//! What keeps the store from writing, while something does: a full or read-only
//! filesystem, or another I/O failure of the journal or the records file.
//!
//! A failed journal append marks the journal faulted. From then on a mutation is
//! refused before it touches memory ([`super::Store`]'s `mutate` asks
//! [`probe`] first), so nothing the callers were told failed shows up later; only
//! the entries of the append that met the failure stay buffered in memory and are
//! written once the disk takes them again. The compaction task retries every
//! second, so the fault clears by itself once space is freed or the filesystem is
//! writable again, without a mutation to notice it.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use serde::Serialize;
use utoipa::ToSchema;

/// Bytes reserved past the journal's end to learn whether the disk takes writes
/// again (kept: later appends use them).
const PROBE_BYTES: i64 = 64 * 1024;

/// What kind of failure a storage fault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum StorageProblem {
    /// No space left (or a quota reached) on the filesystem.
    Full,
    /// The filesystem is mounted read-only (by the operator or by the kernel after
    /// an I/O error).
    ReadOnly,
    /// Another I/O failure.
    Failing,
}

impl StorageProblem {
    /// The kind of `e`, by its `ErrorKind`, which survives wrapping (a temp file's
    /// error names its path around the OS error).
    pub fn of(e: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        match e.kind() {
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => Self::Full,
            ErrorKind::ReadOnlyFilesystem => Self::ReadOnly,
            _ => Self::Failing,
        }
    }

    /// In words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Full => "the filesystem is full",
            Self::ReadOnly => "the filesystem is read-only",
            Self::Failing => "the filesystem fails",
        }
    }
}

/// One storage failure in force: what, where, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Its kind.
    pub problem: StorageProblem,
    /// The file the host failed to write.
    pub path: PathBuf,
    /// What the OS said.
    pub error: String,
    /// When it was first seen (RFC 3339).
    pub since: String,
}

impl Fault {
    /// A fault of writing `path`; `since` is kept from `before` when the fault goes on.
    pub(super) fn new(path: &Path, e: &std::io::Error, before: Option<&Fault>) -> Self {
        let problem = StorageProblem::of(e);
        Self {
            problem,
            path: path.to_owned(),
            error: e.to_string(),
            since: before.map_or_else(super::now, |b| b.since.clone()),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({}) since {}",
            self.path.display(),
            self.problem.describe(),
            self.error,
            self.since
        )
    }
}

/// The faults in force, by what failed.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Appending to the journal failed: mutations are refused.
    pub(super) journal: Option<Fault>,
    /// Writing the records file failed: mutations go on (the journal holds them).
    pub(super) compaction: Option<Fault>,
}

/// Whether the filesystem holding the journal takes `PROBE_BYTES` more past `len`.
/// A filesystem without `fallocate` is taken at its word: the next append tells.
pub(super) fn probe(file: &File, len: u64) -> std::io::Result<()> {
    let offset = i64::try_from(len).unwrap_or(i64::MAX - PROBE_BYTES);
    match fallocate(
        file,
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        PROBE_BYTES,
    ) {
        Ok(()) | Err(Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_errno() {
        let of = |errno: Errno| StorageProblem::of(&std::io::Error::from(errno));
        assert_eq!(of(Errno::ENOSPC), StorageProblem::Full);
        assert_eq!(of(Errno::EDQUOT), StorageProblem::Full);
        assert_eq!(of(Errno::EROFS), StorageProblem::ReadOnly);
        assert_eq!(of(Errno::EIO), StorageProblem::Failing);
        // Wrapped, as a temp file's error is, with its path.
        let wrapped = std::io::Error::new(
            std::io::Error::from(Errno::ENOSPC).kind(),
            "No space left on device (os error 28) at path \"/d/.tokens.json.x\"",
        );
        assert_eq!(StorageProblem::of(&wrapped), StorageProblem::Full);
    }

    #[test]
    fn a_probe_reserves_room_past_the_end_without_growing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("j")).unwrap();
        probe(&file, 0).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 0);
    }
}
