//! Debounced directory watching, shared by the records file and the providers
//! directory: events the caller cares about are collapsed into one signal, sent once
//! the directory has been quiet for the debounce time. Events are not interpreted;
//! working out what changed is the caller's job, which also makes a missed or
//! reordered event harmless. A mere read of a file is never an event: the caller's
//! own read of what it watches would otherwise signal the next read, forever.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A live watch; dropping it stops watching.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

/// Watches `dir` (not recursively) and sends `()` on the returned channel once per
/// burst of events that `relevant` accepts (reads are never offered), `debounce`
/// after the burst's last one.
pub(crate) fn debounced(
    dir: &Path,
    relevant: impl Fn(&notify::Result<notify::Event>) -> bool + Send + 'static,
    debounce: Duration,
) -> Result<(Watch, mpsc::Receiver<()>), notify::Error> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if !is_read(&event) && relevant(&event) {
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
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
            // A full channel already holds a pending signal, which covers this burst.
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
    });
    Ok((Watch { _watcher: watcher }, rx))
}

/// Whether `event` is only a read: a file opened, read, or closed without writing.
/// A close after writing is a change (a writer done with the file).
fn is_read(event: &notify::Result<notify::Event>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    event.as_ref().is_ok_and(|e| {
        matches!(e.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
    })
}
