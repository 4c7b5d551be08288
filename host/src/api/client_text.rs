//! What the host's storage errors say to a client: the same words the operator's log
//! has, with each file named by its name only (`environments.journal`, never where the
//! data directory is) and an I/O failure by its kind (an OS message may carry a path:
//! `tempfile`'s does). A client — in hosted mode, any user — learns what failed and
//! whether to retry, never the server's filesystem layout.

use std::path::Path;

use crate::audit::AuditError;
use crate::store::StoreError;
use crate::tenancy::TenancyError;

/// `path` as a client is shown it: its file name.
fn named(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "a file".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// A records error as a client reads it.
pub(super) fn store(e: &StoreError) -> String {
    match e {
        StoreError::Io { path, source } => format!("{}: {}", named(path), source.kind()),
        StoreError::Invalid { path, reason } => format!("{} is invalid: {reason}", named(path)),
        StoreError::Busy { path, rounds } => format!(
            "{} kept changing during {rounds} attempts to merge and write; the changes stay in the journal",
            named(path)
        ),
        StoreError::Storage {
            path,
            problem,
            source,
        } => format!(
            "{}: {}, so the change was not made ({}); the host takes changes again by itself once it can write",
            named(path),
            problem.describe(),
            source.kind()
        ),
        StoreError::Journal { path, .. } => {
            format!("{}: appending to the journal failed", named(path))
        }
        StoreError::NameTaken(_) | StoreError::NotFound(_) | StoreError::Held(_) => e.to_string(),
    }
}

/// A token file error as a client reads it.
pub(super) fn tenancy(e: &TenancyError) -> String {
    match e {
        TenancyError::Io { path, source } => {
            format!("token file {}: {}", named(path), source.kind())
        }
        TenancyError::File { path, .. } => format!(
            "token file {} is invalid; the operator must fix it",
            named(path)
        ),
        TenancyError::Invalid(_)
        | TenancyError::NotFound(_)
        | TenancyError::Conflict(_)
        | TenancyError::Forbidden(_)
        | TenancyError::Limit(_) => e.to_string(),
    }
}

/// An audit log error as a client reads it.
pub(super) fn audit(e: &AuditError) -> String {
    match e {
        AuditError::Io { path, source } => format!("audit log {}: {}", named(path), source.kind()),
        AuditError::Write { path, .. } => format!("writing the audit log {} failed", named(path)),
        AuditError::Closed => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StorageProblem;

    #[test]
    fn files_are_named_by_name_and_os_messages_by_kind() {
        let at = Path::new("/srv/secret/place/.codebolt");
        // An OS error whose message carries a path, as tempfile's do.
        let with_path = || {
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "No space left on device at path \"/srv/secret/place/.codebolt/.tmp\"",
            )
        };
        let shown = [
            store(&StoreError::Storage {
                path: at.join("environments.journal"),
                problem: StorageProblem::Full,
                source: with_path(),
            }),
            store(&StoreError::Io {
                path: at.join("environments.json"),
                source: with_path(),
            }),
            tenancy(&TenancyError::Io {
                path: at.join("tokens.json"),
                source: with_path(),
            }),
            audit(&AuditError::Write {
                path: at.join("audit.jsonl"),
                reason: with_path().to_string(),
            }),
        ];
        for text in shown {
            assert!(!text.contains("/srv"), "{text}");
        }
        assert!(
            store(&StoreError::Storage {
                path: at.join("environments.journal"),
                problem: StorageProblem::Full,
                source: with_path(),
            })
            .starts_with("environments.journal: the filesystem is full")
        );
    }
}
