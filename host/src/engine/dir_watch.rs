//! Watching the providers directory for hot reload.
//!
//! Events about `*.wasm` files (a rename carries both names) are collapsed into one
//! signal, sent once the directory has been quiet for the debounce time, so a copy in
//! progress is waited out rather than read at every write. Events are not interpreted:
//! what changed is [`Engine::rescan`](super::Engine::rescan)'s job, which also makes a
//! missed or reordered event harmless.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// Why the providers directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum DirWatchError {
    /// The directory could not be created.
    #[error("creating the providers directory {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The watch could not be set up (for example, the inotify limits are reached).
    #[error("watching the providers directory {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
}

/// A live watch of the providers directory; dropping it stops watching.
pub type DirWatch = crate::watch::Watch;

/// Watches `dir` (creating it if missing, as there is nothing to watch otherwise) and
/// sends `()` once per burst of changes to `*.wasm` files, `debounce` after its last
/// event.
pub fn watch_dir(
    dir: &Path,
    debounce: Duration,
) -> Result<(DirWatch, mpsc::Receiver<()>), DirWatchError> {
    std::fs::create_dir_all(dir).map_err(|source| DirWatchError::Create {
        path: dir.to_owned(),
        source,
    })?;
    let relevant = |event: &notify::Result<notify::Event>| match event {
        Ok(event) => (event.paths.iter()).any(|p| p.extension().is_some_and(|x| x == "wasm")),
        // An overflowed queue lost events we cannot name: rescan to be safe.
        Err(_) => true,
    };
    crate::watch::debounced(dir, relevant, debounce).map_err(|source| DirWatchError::Watch {
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wasm_changes_signal_after_quiet_and_other_files_do_not() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("providers");
        let (_watch, mut rx) = watch_dir(&dir, Duration::from_millis(200)).unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        for i in 0..5 {
            std::fs::write(dir.join("p.wasm"), vec![0u8; i * 100]).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a signal")
            .expect("open channel");
        std::fs::write(dir.join("other.txt"), "y").unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(rx.try_recv().is_err(), "a non-wasm file signalled");
    }
}
