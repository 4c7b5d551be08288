//! Workspaces of deleted environments, across a crash. A delete marks the
//! environment's name in `.codebolt/deleting/` before it removes the record and
//! clears the mark once the workspace is gone. A host killed in between leaves the
//! mark, and the next start finishes the job: a marked name that no record holds
//! any more had its delete made durable, so its workspace goes; a name a record
//! still holds was never deleted, so only the mark goes.
//!
//! The mark is not synced: it must survive the host's death, which the page cache
//! does; after a power loss the worst case is a workspace left behind, as before.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::own_dirs::OwnDir;
use crate::store::Store;
use crate::sync::MutexExt;

/// Names whose delete is under way on this host: the record is gone, so the name is
/// free in the store, but the provider's removal and the workspace's are not done. A
/// new environment of such a name (a create, or a template connect re-making the
/// environment of its key, whose name is always the same) would get the directory
/// the delete is about to empty and remove, so it waits for the delete first.
#[derive(Debug, Default)]
pub(super) struct Deleting(Mutex<HashMap<String, CancellationToken>>);

/// A delete's hold on its environment's name; released (and waiters woken) on drop.
pub(super) struct DeletingName<'a> {
    deleting: &'a Deleting,
    name: String,
    done: CancellationToken,
}

impl Deleting {
    /// Holds `name` until the returned guard is dropped (a delete holds it under its
    /// environment's operation lock, so one at a time).
    pub(super) fn hold(&self, name: &str) -> DeletingName<'_> {
        let done = CancellationToken::new();
        self.0.locked().insert(name.to_owned(), done.clone());
        DeletingName {
            deleting: self,
            name: name.to_owned(),
            done,
        }
    }

    /// Returns once no delete holds `name`.
    pub(super) async fn done(&self, name: &str) {
        loop {
            let held = self.0.locked().get(name).cloned();
            match held {
                Some(done) => done.cancelled().await,
                None => return,
            }
        }
    }
}

impl Drop for DeletingName<'_> {
    fn drop(&mut self) {
        let mut held = self.deleting.0.locked();
        // Only its own entry: never one a later hold put there.
        if held.get(&self.name) == Some(&self.done) {
            held.remove(&self.name);
        }
        self.done.cancel();
    }
}

/// Where the marks live.
fn marks(config: &ServeConfig) -> PathBuf {
    config.codebolt_dir().join("deleting")
}

/// The marks directory (made when `create`), reached through no link (see
/// `own_dirs`): a link in its place, or in place of `.codebolt`, would have marks made
/// (and removed, and every file swept at start) in a directory elsewhere.
fn marks_dir(config: &ServeConfig, create: bool) -> std::io::Result<OwnDir> {
    let dir = marks(config);
    if create {
        crate::own_dirs::create(&config.data_dir, &dir)
    } else {
        crate::own_dirs::open(&config.data_dir, &dir)
    }
}

/// Marks `name`'s workspace as being deleted.
pub(super) fn mark(config: &ServeConfig, name: &str) {
    let made = marks_dir(config, true).and_then(|dir| {
        crate::names::join("environment", dir.path(), name)
            .map_err(std::io::Error::other)
            .and_then(|path| {
                // Never through a link someone left under the name. Not truncated on
                // open: a hard link there would be cut before it is refused, and the
                // mark is its name alone.
                let flags = nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CREAT;
                let opened = dir.open_file(name, flags, 0o666);
                crate::untrusted::opened_to_write(&path, opened).map(drop)
            })
    });
    if let Err(e) = made {
        tracing::warn!(%name, error = %e, "could not mark the workspace as being deleted; a crash now would leave it behind");
    }
}

/// Clears `name`'s mark (the workspace is gone, or the delete did not happen).
pub(super) fn unmark(config: &ServeConfig, name: &str) {
    let Ok(dir) = marks_dir(config, false) else {
        return;
    };
    if crate::names::join("environment", dir.path(), name).is_ok() {
        remove_file(&dir, name);
    }
}

fn remove_file(dir: &OwnDir, name: &str) {
    match dir.remove_file(name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %dir.join(name).display(), error = %e, "could not clear a delete mark")
        }
    }
}

/// At start: finishes the deletes a crash interrupted (see the module's comment).
pub(super) fn sweep(config: &ServeConfig, store: &Store) {
    let dir = match marks_dir(config, false) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(error = %e, "delete marks are not read: interrupted deletes are not finished");
            return;
        }
    };
    let Ok(names) = dir.names() else {
        return;
    };
    for name in names {
        let Some(name) = name.to_str().map(str::to_owned) else {
            continue;
        };
        if store.find(|r| r.name == name).is_none() {
            // A name that is not one the host makes is not a path it may remove.
            if let Ok(workspace) = config.workspace_dir(&name) {
                // Never through a link in place of the workspaces' directory.
                let removed = crate::own_dirs::remove_dir_all(&config.data_dir, &workspace);
                match removed {
                    Ok(()) => {
                        tracing::info!(%name, "removed the workspace of an environment deleted just before the host stopped");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(%name, error = %e, "could not remove the workspace of a deleted environment");
                        continue;
                    }
                }
            }
        }
        remove_file(&dir, &name);
    }
}
