//! `wasi:filesystem/preopens`, served by the host instead of wasmtime-wasi so that an
//! instance's directories are opened when its guest asks for them, not when the
//! instance is made, and closed when the guest lets go of them. A guest that touches
//! no file (most calls of most providers), or writes through handles it drops after
//! (the SDK's `fs::write_whole`), holds no descriptor for them while idle: a running
//! `handoff` environment costs the host one descriptor (its runtime's socket) instead
//! of three, and an instantiation two `open`s fewer.
//!
//! Each directory is the one that was at its path when the instance was made: its
//! device and inode are noted then, and an open that finds another directory there (a
//! path swapped for a symlink, say) fails instead of handing the guest something else.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::Resource;
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::p2::bindings::filesystem::preopens;
use wasmtime_wasi::{FsPerms, OpenMode};

use crate::disk_quota::{DiskQuota, DiskQuotas};
use crate::engine::instance::HostState;

/// One directory to preopen.
pub(crate) struct Preopen {
    /// Where it is on the host.
    host: PathBuf,
    /// The path the guest sees it at.
    guest: String,
    /// Its device and inode when the instance was made.
    identity: (u64, u64),
    /// The cap on what the guest writes there (the workspace's and the state
    /// directory's; none on a directory the operator granted).
    quota: Option<Arc<DiskQuota>>,
}

impl Preopen {
    /// `host`, as it is now (it must be a directory), to be seen at `guest`.
    pub(crate) fn at(host: PathBuf, guest: String) -> io::Result<Self> {
        let meta = std::fs::metadata(&host)?;
        if !meta.is_dir() {
            return Err(io::Error::other("not a directory"));
        }
        Ok(Self {
            host,
            guest,
            identity: (meta.dev(), meta.ino()),
            quota: None,
        })
    }

    /// Puts what the guest writes under it under the quota the engine keeps for this
    /// directory, capped at `limit` bytes.
    pub(crate) fn with_quota(mut self, quotas: &DiskQuotas, limit: u64) -> Self {
        self.quota = Some(quotas.on(&self.host, self.identity, limit));
        self
    }

    /// [`Preopen::at`] for a directory the host makes under its data directory (an
    /// environment's workspace, a provider's state): a symbolic link in its place is
    /// refused, or whoever may write the data directory could hand the provider, and
    /// the runtime it starts there, any directory of the host's user to change or
    /// empty (a provider's removal empties its workspace).
    pub(crate) fn own(host: PathBuf, guest: String) -> io::Result<Self> {
        if std::fs::symlink_metadata(&host)?.file_type().is_symlink() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a symbolic link, not a directory the host made; remove it",
            ));
        }
        Self::at(host, guest)
    }

    /// `self` if it is the directory of device and inode `made` (when given), the one
    /// the host made: refused if another is at its path now.
    pub(crate) fn made_as(self, made: Option<(u64, u64)>) -> io::Result<Self> {
        match made {
            Some(made) if made != self.identity => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "another directory is there than the one the host made; was a directory on its path swapped for a link?",
            )),
            _ => Ok(self),
        }
    }

    /// Opens it, read-write, as wasmtime-wasi opens its own preopens.
    fn open(&self) -> wasmtime::Result<Dir> {
        let failed =
            |e: io::Error| wasmtime::Error::msg(format!("preopening {}: {e}", self.host.display()));
        let file = open_dir(&self.host).map_err(failed)?;
        let meta = file.metadata().map_err(failed)?;
        if (meta.dev(), meta.ino()) != self.identity {
            return Err(failed(io::Error::other(
                "another directory is there than when the instance was made",
            )));
        }
        Ok(Dir::new(
            file,
            FsPerms::ReadWrite,
            OpenMode::READ | OpenMode::WRITE,
            // Blocking filesystem work goes to tokio's blocking pool, as by default.
            false,
        ))
    }
}

/// Opens a directory the way wasmtime-wasi opens a preopen: `O_DIRECTORY`, and
/// `O_PATH` (a handle to resolve paths under, not to read), close-on-exec.
fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(path)
}

impl preopens::Host for HostState {
    /// Opens every directory anew: each descriptor handed out holds its own handle,
    /// closed when the guest drops it, and counts as an open file (past the caps of
    /// `open_files` the call traps).
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let mut out = Vec::with_capacity(self.preopens.len());
        for dir in &self.preopens {
            // Each is an open file; past the cap the guest is holding on to far too
            // many, and this call has no error to return.
            self.files.take_preopen(&self.env_id)?;
            let opened = self.table.push(Descriptor::Dir(dir.open()?))?;
            self.disk.note(opened.rep(), dir.quota.clone());
            out.push((opened, dir.guest.clone()));
        }
        Ok(out)
    }
}

/// Puts these preopens in place of wasmtime-wasi's (added before, and so shadowed).
pub(crate) fn add_to_linker(
    linker: &mut wasmtime::component::Linker<HostState>,
) -> wasmtime::Result<()> {
    super::shadowing(linker, |linker| {
        preopens::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)
    })
}
