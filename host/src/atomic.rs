//! Replacing a file all at once: written to a hidden temporary beside it, made durable,
//! renamed over it, and the directory synced. A reader (or a directory watcher) sees
//! the old file or the new one, never half of one; the temporary's name (`.NAME.xxxx`)
//! ends in neither the file's extension nor anything a watcher loads.

use std::io::Write;
use std::path::Path;

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
