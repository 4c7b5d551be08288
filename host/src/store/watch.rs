//! Watching the records file for outside edits.
//!
//! The directory is watched, not the file: atomic writers (this host included)
//! replace the file by renaming, which a watch on the old inode would miss. Bursts of
//! events are debounced into one signal; what changed is [`super::Store::reload`]'s job.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("watching {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// A live watch; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatch")
    }
}

/// Watches `file` and sends `()` on the returned channel once per burst of changes,
/// `debounce` after the burst's last event.
pub fn watch(
    file: &Path,
    debounce: Duration,
) -> Result<(FileWatch, mpsc::Receiver<()>), WatchError> {
    let dir = file.parent().unwrap_or(Path::new(".")).to_owned();
    let name = file.file_name().map(|n| n.to_owned());
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_owned()) == name)
        {
            let _ = raw_tx.send(());
        }
    })
    .map_err(|source| WatchError {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            path: dir.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Wait for quiet: every further event restarts the wait.
            loop {
                match tokio::time::timeout(debounce, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // A full channel already holds a pending signal; that one will do.
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
    });
    Ok((FileWatch { _watcher: watcher }, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_is_one_signal_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("environments.json");
        std::fs::write(&file, "{}").unwrap();
        let (_watch, mut rx) = watch(&file, Duration::from_millis(500)).unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        for i in 0..5 {
            std::fs::write(&file, format!("{{\"n\": {i}}}")).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a signal")
            .expect("open channel");
        // Nothing else is pending once the burst is reported.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(rx.try_recv().is_err());
    }
}
