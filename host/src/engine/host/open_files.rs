//! The open files a guest holds on the host through `wasi:filesystem`: every
//! descriptor (a preopen handed out by `get-directories`, whatever `open-at` opens), every
//! directory listing (`read-directory`) and every file stream (`read-via-stream`,
//! `write-via-stream`, `append-via-stream`, which keep the file open after its descriptor
//! is dropped) is one. Without a count, the resource table's cap (4,096 handles) was the
//! only bound: a few instances could take every descriptor the host may open, and the
//! host could no longer accept a connection or write a record.
//!
//! An instance holds at most `[limits] max_open_files` (256), and all instances together
//! at most `[limits] host_open_files` (by default a sixteenth of the host's open-files
//! limit). Past either an open fails with `insufficient-memory`, and a `get-directories`
//! past twice the instance's own cap, or past the host's, traps (it has no error to
//! return); a drop gives the file back. Sockets are counted the same way
//! (`super::sockets`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use wasmtime::component::{LinkerInstance, Resource, ResourceType};

use crate::engine::instance::HostState;

/// The default of `[limits] host_open_files`: a sixteenth of the process's open-files
/// limit (the server raises it to the hard limit at start, before the engine is made),
/// at least 64. The server's connections take at most seven eighths by default
/// (`server::connections`); the eighth left is for the host's own files and the
/// providers' children, and guests get half of it.
fn default_host_cap() -> usize {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft != RLIM_INFINITY => {
            usize::try_from(soft / 16).unwrap_or(usize::MAX).max(64)
        }
        _ => 1 << 20,
    }
}

/// The count over every instance of the engine.
pub(crate) struct HostFiles {
    /// `[limits] host_open_files` when it is not set, read once.
    default_cap: usize,
    held: AtomicUsize,
    /// Opens refused at either cap since the engine started.
    refused: AtomicU64,
}

impl HostFiles {
    /// An empty count.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            default_cap: default_host_cap(),
            held: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The cap on all instances' open files when `[limits] host_open_files` is not set.
    pub(crate) fn default_cap(&self) -> usize {
        self.default_cap
    }

    /// Open files held by all instances now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Opens refused at a cap since the engine started.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Which cap an open would pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TooMany {
    /// The instance's own.
    #[error("the provider holds {0} open files, its cap ([limits] max_open_files)")]
    Instance(usize),
    /// All instances' together.
    #[error("providers hold {0} open files on this host, the cap ([limits] host_open_files)")]
    Host(usize),
}

/// One instance's count.
pub(crate) struct OpenFiles {
    host: Arc<HostFiles>,
    /// The instance's cap and the host's.
    caps: (usize, usize),
    held: usize,
    /// The file streams counted, by handle (a stream handle is reused by other streams
    /// once dropped, which are not counted).
    streams: HashSet<u32>,
    /// Whether a refusal was logged (one line an instance).
    logged: bool,
}

impl OpenFiles {
    /// A count against `host`, capped at `instance` for this instance and `host_cap` for
    /// all of them.
    pub(crate) fn new(host: Arc<HostFiles>, instance: usize, host_cap: usize) -> Self {
        Self {
            host,
            caps: (instance, host_cap),
            held: 0,
            streams: HashSet::new(),
            logged: false,
        }
    }

    /// Counts one more open file, or says which cap it would pass.
    pub(crate) fn take(&mut self, env: &str) -> Result<(), TooMany> {
        self.take_within(env, self.caps.0)
    }

    /// [`OpenFiles::take`] for a directory `get-directories` hands out: past the
    /// instance's cap up to twice it, so that a guest whose first use of a file comes
    /// when it holds its cap in sockets gets its directories (a refusal there traps),
    /// while a guest calling it over and over to hoard them is still stopped.
    pub(crate) fn take_preopen(&mut self, env: &str) -> Result<(), TooMany> {
        self.take_within(env, self.caps.0.saturating_mul(2))
    }

    fn take_within(&mut self, env: &str, instance: usize) -> Result<(), TooMany> {
        let host_cap = self.caps.1;
        let refused = if self.held >= instance {
            Some(TooMany::Instance(instance))
        } else {
            let taken = self
                .host
                .held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    (held < host_cap).then_some(held + 1)
                });
            taken.is_err().then_some(TooMany::Host(host_cap))
        };
        match refused {
            None => {
                self.held += 1;
                Ok(())
            }
            Some(too_many) => {
                self.host.refused.fetch_add(1, Ordering::Relaxed);
                if !self.logged {
                    self.logged = true;
                    tracing::warn!(env, reason = %too_many, "open refused");
                }
                Err(too_many)
            }
        }
    }

    /// Gives one back.
    pub(crate) fn give(&mut self) {
        if self.held > 0 {
            self.held -= 1;
            self.host.held.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Notes that the stream `rep` holds the file counted last.
    pub(crate) fn note_stream(&mut self, rep: u32) {
        self.streams.insert(rep);
    }

    /// Gives back the file of the stream `rep`, if it was counted.
    pub(crate) fn drop_stream(&mut self, rep: u32) {
        if self.streams.remove(&rep) {
            self.give();
        }
    }
}

/// Defines the drop of the resource `name` (of host type `T`) in `instance` as giving
/// back the open file it held, then `drop` (wasmtime-wasi's own).
pub(crate) fn drop_gives_back<T: 'static>(
    instance: &mut LinkerInstance<'_, HostState>,
    name: &str,
    drop: fn(&mut HostState, Resource<T>) -> wasmtime::Result<()>,
) -> wasmtime::Result<()> {
    instance.resource(name, ResourceType::host::<T>(), move |mut store, rep| {
        let state = store.data_mut();
        state.files.give();
        drop(state, Resource::new_own(rep))
    })
}

impl Drop for OpenFiles {
    fn drop(&mut self) {
        self.host.held.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_keep_to_their_cap_and_the_host_s() {
        let host = HostFiles::new();
        let mut a = OpenFiles::new(host.clone(), 2, 3);
        let mut b = OpenFiles::new(host.clone(), 2, 3);
        assert!(a.take("a").is_ok() && a.take("a").is_ok());
        assert!(matches!(a.take("a"), Err(TooMany::Instance(2))));
        let mut c = OpenFiles::new(HostFiles::new(), 1, 10);
        assert!(c.take("c").is_ok() && c.take_preopen("c").is_ok());
        assert!(matches!(c.take_preopen("c"), Err(TooMany::Instance(2))));
        assert!(b.take("b").is_ok());
        assert!(matches!(b.take("b"), Err(TooMany::Host(3))));
        a.note_stream(7);
        a.drop_stream(8);
        assert_eq!(host.held(), 3, "an uncounted stream gives nothing back");
        a.drop_stream(7);
        assert!(b.take("b").is_ok());
        drop(b);
        assert_eq!(host.held(), 1, "an instance's files go back with it");
        a.give();
        a.give();
        assert_eq!(host.held(), 0);
    }
}
