//! Splitting one `git diff` patch into per-file diffs.

use tether_provider_sdk::{ChangeKind, DiffFile};

/// The files of `patch`, each with its own part of the patch.
pub(crate) fn split(patch: &str) -> Vec<DiffFile> {
    let mut files = Vec::new();
    let mut current: Option<String> = None;
    for line in patch.split_inclusive('\n') {
        if line.starts_with("diff --git ") {
            if let Some(done) = current.take() {
                files.push(file_of(done));
            }
            current = Some(String::new());
        }
        if let Some(part) = current.as_mut() {
            part.push_str(line);
        }
    }
    if let Some(done) = current {
        files.push(file_of(done));
    }
    files
}

fn file_of(diff: String) -> DiffFile {
    let mut change = ChangeKind::Modified;
    let mut path = None;
    let mut old_path = None;
    for line in diff.lines() {
        if line.starts_with("@@") || line.starts_with("GIT binary patch") {
            break;
        }
        if line.starts_with("new file mode") {
            change = ChangeKind::Added;
        } else if line.starts_with("deleted file mode") {
            change = ChangeKind::Deleted;
        } else if let Some(to) = line.strip_prefix("rename to ") {
            change = ChangeKind::Renamed;
            path = Some(unquote(to));
        } else if let Some(to) = line.strip_prefix("+++ b/") {
            path.get_or_insert_with(|| unquote(to));
        } else if let Some(from) = line.strip_prefix("--- a/") {
            old_path = Some(unquote(from));
        }
    }
    // Without `+++`/`rename to` lines (a deletion, a binary or mode-only change),
    // the path comes from `---` or the header.
    let path = path
        .or(old_path)
        .or_else(|| header_path(&diff))
        .unwrap_or_default();
    DiffFile { path, change, diff }
}

/// The `b/` path of a `diff --git a/X b/X` header, for paths without spaces.
fn header_path(diff: &str) -> Option<String> {
    let header = diff.lines().next()?;
    let rest = header.strip_prefix("diff --git ")?;
    let (_, b) = rest.rsplit_once(" b/")?;
    Some(unquote(b))
}

/// Git quotes unusual paths (`"a/x\ty"`); keep the text between the quotes.
fn unquote(path: &str) -> String {
    let path = path.trim_end();
    path.strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .unwrap_or(path)
        .to_owned()
}
