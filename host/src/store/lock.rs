//! One host per data directory: an advisory lock on `.codebolt/tether.lock`, held for
//! the life of the process (the OS drops it if the process dies, even by SIGKILL).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    /// Another process holds it.
    #[error("another tether host is already serving {dir} (lock {path} is held{holder})")]
    Held {
        /// The data directory.
        dir: PathBuf,
        /// The lock file in it.
        path: PathBuf,
        /// Who holds it (` by pid N`), when the lock file says.
        holder: String,
    },
    /// The lock file could not be opened.
    #[error("lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` or fails at once.
    pub(crate) fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let dir = data_dir.join(".codebolt");
        let path = dir.join("tether.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        // Never through a link: the file is cut to the pid below.
        let mut file = crate::untrusted::open_to_write(
            &path,
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false),
        )
        .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = holder_pid(&mut file)
                    .map(|pid| format!(" by pid {pid}"))
                    .unwrap_or_default();
                return Err(LockError::Held {
                    dir: data_dir.to_owned(),
                    path,
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the message a second host prints.
        file.set_len(0).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// The pid the lock file names, if it names one: the file is in the data directory,
/// where anyone who can write there may have put anything (a huge file, terminal
/// escapes), so at most a few bytes are read and only a number is believed.
fn holder_pid(file: &mut File) -> Option<u32> {
    use std::io::Read;
    let mut text = String::new();
    (file.take(16)).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }));
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(first);
        assert!(DataDirLock::acquire(dir.path()).is_ok());
    }

    #[test]
    fn a_lock_file_that_names_no_pid_is_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDirLock::acquire(dir.path()).unwrap();
        let path = dir.path().join(".codebolt/tether.lock");
        std::fs::write(&path, "\u{1b}[2J".repeat(100_000)).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("is held)"), "{err}");
    }
}
