//! Watching the records file for outside edits.
//!
//! The directory is watched, not the file: atomic writers (this host included)
//! replace the file by renaming, which a watch on the old inode would miss. A file
//! written in place is read once its writer closes it, never while it is being
//! written. Bursts of events are debounced into one signal; what changed is the
//! caller's job ([`super::Store::reload`], the reload of `tether.toml`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

/// A live watch of the records file; dropping it stops watching.
pub(crate) type FileWatch = crate::watch::Watch;

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("watching {path}: {source}")]
pub(crate) struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// Watches `file` and sends `()` on the returned channel once per burst of changes,
/// `debounce` after the burst's last event. A change to a `..name` entry beside it
/// counts too: Kubernetes updates a mounted ConfigMap or Secret by swapping a `..data`
/// symlink that `file` (a symlink itself) leads through, and `file` sees no event.
pub(crate) fn watch(
    file: &Path,
    debounce: Duration,
) -> Result<(FileWatch, mpsc::Receiver<()>), WatchError> {
    let dir = file.parent().unwrap_or(Path::new(".")).to_owned();
    let name = file.file_name().map(|n| n.to_owned());
    let ours = move |p: &Path| {
        p.file_name()
            .is_some_and(|n| Some(n) == name.as_deref() || n.as_encoded_bytes().starts_with(b".."))
    };
    let relevant = move |event: &notify::Result<notify::Event>| {
        event
            .as_ref()
            .is_ok_and(|event| !still_writing(event) && event.paths.iter().any(|p| ours(p)))
    };
    crate::watch::debounced(&dir, relevant, debounce).map_err(|source| WatchError {
        path: dir.clone(),
        source,
    })
}

/// Whether `event` is a write under way (a truncation or a write into the file): what
/// the file holds then may be half of what its writer means, and the writer's close,
/// a rename or a removal follows it. Waiting for that, rather than for a quiet spell,
/// keeps a slow writer's empty or half-written file (`generate > tether.toml`) from
/// being put in force.
fn still_writing(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        notify::EventKind::Modify(notify::event::ModifyKind::Data(_))
    )
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
