//! The directories the host makes, writes in and removes under in the data directory
//! (`.codebolt/` and the ones below it), which anyone who may write the data directory
//! can swap for a symbolic link: followed, it would carry the host's writes, and its
//! removal of a deleted environment's workspace, to a directory elsewhere. Each is
//! used only while it is a real directory: checked at start (a link stops the start)
//! and again before each workspace is made or removed and each log is written. The
//! files in them are opened through no link by `untrusted`.

use std::path::{Path, PathBuf};

use crate::config::ServeConfig;

/// Checks that no directory of `dir` below `root` (`dir` included) is a symbolic link
/// or anything but a directory; a part not made yet is fine (`create` makes it). A
/// `dir` outside `root` is the operator's choice (a cache elsewhere) and not checked.
pub(crate) fn check(root: &Path, dir: &Path) -> std::io::Result<()> {
    let Ok(below) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut path = root.to_owned();
    for part in below.components() {
        path.push(part);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            return Err(refusal(&path, "a symbolic link"));
        }
        if !meta.is_dir() {
            return Err(refusal(&path, "not a directory"));
        }
    }
    Ok(())
}

/// Makes `dir` (and its parents) below `root` after [`check`], and checks again:
/// a link put in place meanwhile is not used from then on.
pub(crate) fn create(root: &Path, dir: &Path) -> std::io::Result<()> {
    check(root, dir)?;
    std::fs::create_dir_all(dir)?;
    check(root, dir)
}

/// The host's directories under the data directory of `config`, for the check at
/// start. `.codebolt/deleting` is left to its own check (a link there only stops
/// the delete marks, as before).
fn at_start(config: &ServeConfig) -> Vec<PathBuf> {
    let codebolt = config.codebolt_dir();
    let mut dirs: Vec<PathBuf> = [
        "",
        "environments",
        "logs",
        "provider-state",
        "providers",
        "cluster",
        "removal-workspaces",
    ]
    .iter()
    .map(|name| codebolt.join(name))
    .collect();
    dirs.extend(config.compile_cache.dir.clone());
    dirs
}

/// At start: the first of the host's directories that is a link (or no directory),
/// as the error that stops the start.
pub(crate) fn check_at_start(config: &ServeConfig) -> std::io::Result<()> {
    at_start(config)
        .iter()
        .try_for_each(|dir| check(&config.data_dir, dir))
}

fn refusal(path: &Path, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{} is {what}, not the host's directory; remove it",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_anywhere_below_the_root_is_refused_a_missing_part_is_not() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let root = root.path();
        assert!(check(root, &root.join(".codebolt/logs")).is_ok());
        create(root, &root.join(".codebolt/environments")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join(".codebolt/logs")).unwrap();
        let e = check(root, &root.join(".codebolt/logs/deeper")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        assert!(create(root, &root.join(".codebolt/logs/deeper")).is_err());
        assert!(!elsewhere.path().join("deeper").exists());
        std::fs::write(root.join(".codebolt/providers"), "").unwrap();
        let e = check(root, &root.join(".codebolt/providers")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        // Outside the root: the operator's, not checked.
        assert!(check(root, elsewhere.path()).is_ok());
    }
}
