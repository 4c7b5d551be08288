//! The records file on disk: read (a missing file reads as `{}`), hashed to tell the
//! host's own writes from outside edits, replaced atomically unless someone edited
//! it meanwhile, and copied aside when it is invalid.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::StoreError;

/// The most the records file or its journal may hold: 1 GiB, some 10,000 records of
/// 100 KiB each. A file made larger (by hand, or pointed at a device) is refused
/// without being read into memory; the host neither loads it nor writes over it.
pub(super) const MAX_FILE_BYTES: u64 = 1 << 30;

/// The bytes of `path`, read no further than [`MAX_FILE_BYTES`]; a larger file is an
/// `InvalidData` error saying so.
pub(super) fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {MAX_FILE_BYTES} bytes, more than any records file or journal holds; it was not read"
            ),
        )
    };
    let file = crate::untrusted::open_regular(path)?;
    // The size says it at once; the bounded read covers a file growing meanwhile.
    if file.metadata()?.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    crate::untrusted::read_at_most(file, MAX_FILE_BYTES)?.ok_or_else(too_large)
}

/// The file's bytes; a missing file (deleted by hand) reads as an empty one.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    match read_bounded(path) {
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
    let kept = crate::atomic::keep_copy_beside(path, INVALID, MAX_FILE_BYTES);
    if let Some(copy) = kept.map_err(|source| kept_error(path, source))? {
        logged(copy);
    }
    Ok(())
}

/// Keeps `text`, an invalid edit of the records file the host replaced, beside it.
pub(super) fn keep_text(path: &Path, text: &[u8]) -> Result<(), StoreError> {
    let kept = crate::atomic::keep_beside(path, INVALID, text);
    kept.map(logged).map_err(|source| kept_error(path, source))
}

/// The copies are `environments.json.invalid-<timestamp>`.
const INVALID: &str = "invalid";

fn logged(copy: std::path::PathBuf) {
    tracing::warn!(copy = %copy.display(), "kept a copy of the invalid records file");
}

fn kept_error(path: &Path, source: std::io::Error) -> StoreError {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{INVALID}-*"));
    StoreError::Io {
        path: path.with_file_name(name),
        source,
    }
}

/// What an attempt to replace the file found.
#[derive(Debug)]
pub(super) enum Replaced {
    /// The file holds the new text.
    Done,
    /// The file no longer hashed to what the caller read; nothing was replaced.
    Changed,
    /// The file holds the new text, but an edit landed between the last check and
    /// the swap: this is the edit's text, which is nowhere else now, to merge.
    Raced(Vec<u8>),
}

/// Replaces the file with `bytes` (durable in a temp file first, then swapped in and
/// the directory synced), unless it no longer hashes to `seen`. The swap is an atomic
/// exchange, so the text it replaced is still there to compare: an edit saved in the
/// instant between the check and the swap is handed back, never lost.
pub(super) fn write_unless_changed(
    path: &Path,
    bytes: &[u8],
    seen: [u8; 32],
) -> Result<Replaced, StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = temp_with(dir, bytes).map_err(io)?;
    if sha(&read_file(path)?) != seen {
        return Ok(Replaced::Changed);
    }
    let outcome = match exchange(tmp.path(), path) {
        Ok(()) => {
            // The temp file's name now holds the text that was replaced; dropping
            // `tmp` removes it.
            // Bounded like any read of the file: it may be anything someone put there.
            let before = read_bounded(tmp.path()).map_err(io)?;
            if sha(&before) == seen {
                Replaced::Done
            } else {
                Replaced::Raced(before)
            }
        }
        // No file to exchange with (deleted, or never written), or a file system
        // without exchange: a plain rename.
        Err(_) => {
            tmp.persist(path).map_err(|e| io(e.error))?;
            Replaced::Done
        }
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(outcome)
}

/// Swaps the names of `a` and `b` atomically.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(std::io::Error::from)
}

/// Without an atomic exchange, a plain rename (an edit in the instant before it is
/// replaced).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
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
