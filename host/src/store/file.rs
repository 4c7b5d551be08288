//! The records file on disk: read (a missing file reads as `{}`), hashed to tell the
//! host's own writes from outside edits, replaced atomically unless someone edited
//! it meanwhile, and copied aside when it is invalid.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::StoreError;

/// The file's bytes; a missing file (deleted by hand) reads as an empty one.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(b"{}".to_vec()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// SHA-256 of `bytes`.
pub(super) fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Copies an invalid records file aside before the host replaces it.
pub(super) fn keep_copy(path: &Path) -> Result<(), StoreError> {
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let name = format!(
        "{}.invalid-{stamp}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("environments.json")
    );
    let copy = path.with_file_name(name);
    match std::fs::copy(path, &copy) {
        Ok(_) => {
            tracing::warn!(copy = %copy.display(), "kept a copy of the invalid records file");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io { path: copy, source }),
    }
}

/// [`write_atomic`], unless the file no longer hashes to `seen` once the new text is
/// durable in its temp file (`Ok(false)`: someone edited it; nothing was replaced).
pub(super) fn write_unless_changed(
    path: &Path,
    bytes: &[u8],
    seen: [u8; 32],
) -> Result<bool, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = temp_with(dir, bytes).map_err(io)?;
    if sha(&read_file(path)?) != seen {
        return Ok(false);
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(true)
}

/// A durable temp file beside the records file holding `bytes`.
fn temp_with(dir: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".environments.json.")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}
