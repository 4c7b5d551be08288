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

/// Moves a directory someone left at `path`, where the host is about to rename or
/// remove one of its files, aside whole (`<name>.rejected-<ns>`, never removed) and
/// logs it; nothing else there is touched. A directory there would otherwise fail that
/// rename or removal every time, and whatever waits on it (a log's rotation, the
/// journal's compaction) for good.
pub(crate) fn move_directory_aside(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let moved = move_beside(path, "rejected")?;
        let moved = moved.as_deref().unwrap_or(path);
        tracing::warn!(path = %path.display(), moved = %moved.display(), "a directory in the place of one of the host's files was moved aside");
    }
    Ok(())
}

/// `<path>.<why>-<unix time in ns>`.
fn beside(path: &Path, why: &str) -> PathBuf {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{why}-{stamp}"));
    path.with_file_name(name)
}

/// [`keep_beside`] for the file as it is on disk now; `None` when there is none. It is
/// read as the host reads any file someone may have swapped (no waiting on a named
/// pipe, nothing but a regular file) and no further than `limit`: a file that grew
/// past it since the host last read it is not copied (an `InvalidData` error).
pub(crate) fn keep_copy_beside(
    path: &Path,
    why: &str,
    limit: u64,
) -> std::io::Result<Option<PathBuf>> {
    let file = match crate::untrusted::open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bytes = crate::untrusted::read_at_most(file, limit)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes; no copy was kept"),
        )
    })?;
    keep_beside(path, why, &bytes).map(Some)
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
            keep_copy_beside(&path, "invalid", 1024)
                .expect("no file")
                .is_none()
        );
        std::fs::write(&path, b"{ broken").expect("write");
        let first = keep_copy_beside(&path, "invalid", 1024)
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

    /// The file is one someone may have swapped since the host read it: a named pipe
    /// is refused rather than waited on, and a file grown past the bound not copied.
    #[test]
    fn a_copy_is_kept_of_a_regular_file_within_the_bound_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pipe = dir.path().join("pipe.json");
        nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let refused = keep_copy_beside(&pipe, "invalid", 1024).expect_err("a pipe");
        assert!(refused.to_string().contains("named pipe"), "{refused}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b'x'; 1025]).expect("write");
        let refused = keep_copy_beside(&big, "invalid", 1024).expect_err("too large");
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 2, "no copy is made: {left:?}");
    }
}
