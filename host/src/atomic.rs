//! Replacing a file all at once: written to a hidden temporary beside it, made durable,
//! renamed over it, and the directory synced. A reader (or a directory watcher) sees
//! the old file or the new one, never half of one; the temporary's name (`.NAME.xxxx`)
//! ends in neither the file's extension nor anything a watcher loads. Also: keeping a
//! bad file's text beside it before the host writes over it, or moving a file it
//! would not read there whole.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` atomically, creating its directory; the new file is
/// readable by its owner only (tempfile makes it 0600, the rename keeps the mode).
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Keeps `bytes`, the text of `path` the host rejected, beside it as
/// `<name>.<why>-<unix time in ns>` (written as [`replace_file`] writes: whole, owner
/// only, since records carry providers' configs); the copy's path.
pub(crate) fn keep_beside(path: &Path, why: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let copy = beside(path, why);
    replace_file(&copy, bytes)?;
    Ok(copy)
}

/// Moves `path`, a file the host would not read (too large, not a regular file), to
/// where [`keep_beside`] keeps a copy: renamed whole, never read; its new path, or
/// `None` when there is no file.
pub(crate) fn move_beside(path: &Path, why: &str) -> std::io::Result<Option<PathBuf>> {
    let moved = beside(path, why);
    match std::fs::rename(path, &moved) {
        Ok(()) => Ok(Some(moved)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `<path>.<why>-<unix time in ns>`.
fn beside(path: &Path, why: &str) -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{why}-{stamp}"));
    path.with_file_name(name)
}

/// [`keep_beside`] for the file as it is on disk now; `None` when there is none.
pub(crate) fn keep_copy_beside(path: &Path, why: &str) -> std::io::Result<Option<PathBuf>> {
    match std::fs::read(path) {
        Ok(bytes) => keep_beside(path, why, &bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_kept_copy_sits_beside_the_file_owner_only_and_each_has_its_own_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("records.json");
        assert!(
            keep_copy_beside(&path, "invalid")
                .expect("no file")
                .is_none()
        );
        std::fs::write(&path, b"{ broken").expect("write");
        let first = keep_copy_beside(&path, "invalid")
            .expect("kept")
            .expect("a copy");
        let second = keep_beside(&path, "invalid", b"other").expect("kept");
        assert_ne!(first, second);
        assert_eq!(first.parent(), Some(dir.path()));
        let name = first.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.starts_with("records.json.invalid-"), "{name}");
        assert_eq!(std::fs::read(&first).expect("read"), b"{ broken");
        assert_eq!(std::fs::read(&second).expect("read"), b"other");
        let mode = std::fs::metadata(&first)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
