//! `read-directory` and its `directory-entry-stream`, served by the host in place of
//! wasmtime-wasi's, which reads the whole directory into host memory when the listing is
//! made. A guest could make a directory of a million long names (its disk quota allows
//! two million entries) and hold a listing of it in every open file it may hold: a few
//! hundred megabytes of host memory each, outside its own memory limit. A [`Listing`]
//! instead keeps its own descriptor of the directory (counted as the open file a listing
//! is) and reads [`BATCH`] entries at a time, as the guest asks for them, off the async
//! threads.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::dir::{Dir, OwningIter, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use wasmtime_wasi::p2::FsError;
use wasmtime_wasi::p2::bindings::filesystem::types::{DescriptorType, DirectoryEntry, ErrorCode};

/// Entries read from the directory at a time: what a listing holds in host memory at
/// most (a name is at most 255 bytes).
const BATCH: usize = 128;

/// One entry as the guest gets it, or the error that ends the listing.
type Entry = Result<DirectoryEntry, FsError>;

/// A directory being listed.
pub(crate) struct Listing {
    /// Entries read and not yet handed out, the next first.
    ready: VecDeque<Entry>,
    /// What reads on; `None` once the directory was read to its end (or failed).
    reader: Option<Reader>,
}

/// The directory's entries, and a descriptor to look up an entry's type in when the
/// file system does not say it.
struct Reader {
    entries: OwningIter,
    lookup: OwnedFd,
}

impl Listing {
    /// A listing of `dir` (a directory descriptor of the guest's), with its own
    /// descriptor of it so that its position is its own.
    pub(crate) fn open(dir: impl AsFd) -> io::Result<Self> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = openat(dir, c".", flags, Mode::empty())?;
        let lookup = fd.try_clone()?;
        Ok(Self {
            ready: VecDeque::new(),
            reader: Some(Reader {
                entries: Dir::from_fd(fd)?.into_iter(),
                lookup,
            }),
        })
    }

    /// The next entry, `None` at the end; reads the next batch when none is ready.
    pub(crate) async fn next(&mut self) -> Result<Option<DirectoryEntry>, FsError> {
        if self.ready.is_empty()
            && let Some(mut reader) = self.reader.take()
        {
            let read = tokio::task::spawn_blocking(move || {
                let (batch, more) = reader.batch();
                (batch, more.then_some(reader))
            })
            .await;
            // A batch that panicked or was cancelled ends the listing.
            let (batch, reader) = read.map_err(|e| FsError::from(io::Error::other(e)))?;
            self.ready = batch;
            self.reader = reader;
        }
        self.ready.pop_front().transpose()
    }
}

impl Reader {
    /// Up to [`BATCH`] entries, and whether there may be more.
    fn batch(&mut self) -> (VecDeque<Entry>, bool) {
        let mut batch = VecDeque::with_capacity(BATCH);
        while batch.len() < BATCH {
            let entry = match self.entries.next() {
                None => return (batch, false),
                Some(Err(e)) => {
                    batch.push_back(Err(FsError::from(io::Error::from(e))));
                    return (batch, false);
                }
                Some(Ok(entry)) => entry,
            };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(kind) => descriptor_type(kind),
                None => match fstatat(&self.lookup, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(stat) => mode_type(stat.st_mode),
                    // Gone since the directory was read: as if read a moment later.
                    Err(Errno::ENOENT) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "a listed entry's type could not be read");
                        DescriptorType::Unknown
                    }
                },
            };
            batch.push_back(match name.to_str() {
                Ok(name) => Ok(DirectoryEntry {
                    type_: kind,
                    name: name.to_owned(),
                }),
                Err(_) => Err(ErrorCode::IllegalByteSequence.into()),
            });
        }
        (batch, true)
    }
}

fn descriptor_type(kind: Type) -> DescriptorType {
    match kind {
        Type::Directory => DescriptorType::Directory,
        Type::File => DescriptorType::RegularFile,
        Type::Symlink => DescriptorType::SymbolicLink,
        Type::BlockDevice => DescriptorType::BlockDevice,
        Type::CharacterDevice => DescriptorType::CharacterDevice,
        Type::Fifo => DescriptorType::Fifo,
        Type::Socket => DescriptorType::Socket,
    }
}

fn mode_type(mode: nix::sys::stat::mode_t) -> DescriptorType {
    let kind = SFlag::from_bits_truncate(mode) & SFlag::S_IFMT;
    [
        (SFlag::S_IFDIR, DescriptorType::Directory),
        (SFlag::S_IFREG, DescriptorType::RegularFile),
        (SFlag::S_IFLNK, DescriptorType::SymbolicLink),
        (SFlag::S_IFBLK, DescriptorType::BlockDevice),
        (SFlag::S_IFCHR, DescriptorType::CharacterDevice),
        (SFlag::S_IFIFO, DescriptorType::Fifo),
        (SFlag::S_IFSOCK, DescriptorType::Socket),
    ]
    .into_iter()
    .find_map(|(flag, kind_of)| (flag == kind).then_some(kind_of))
    .unwrap_or(DescriptorType::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn names(listing: &mut Listing) -> Vec<(String, DescriptorType)> {
        let mut names = Vec::new();
        while let Some(entry) = listing.next().await.expect("entry") {
            names.push((entry.name, entry.type_));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
    }

    #[tokio::test]
    async fn a_listing_reads_every_entry_in_batches_with_its_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let count = BATCH * 3 + 7;
        for i in 0..count {
            std::fs::write(dir.path().join(format!("f{i:04}")), b"").expect("file");
        }
        std::fs::create_dir(dir.path().join("sub")).expect("dir");
        std::os::unix::fs::symlink("f0000", dir.path().join("link")).expect("link");
        let top = std::fs::File::open(dir.path()).expect("open");
        let mut listing = Listing::open(&top).expect("listing");
        let listed = names(&mut listing).await;
        assert_eq!(listed.len(), count + 2);
        assert!(listed.contains(&("sub".into(), DescriptorType::Directory)));
        assert!(listed.contains(&("link".into(), DescriptorType::SymbolicLink)));
        assert!(listed.contains(&("f0000".into(), DescriptorType::RegularFile)));
        assert!(listing.next().await.expect("end").is_none(), "stays ended");
        // Two listings of one directory each read it whole: their positions are their own.
        let mut a = Listing::open(&top).expect("a");
        let mut b = Listing::open(&top).expect("b");
        assert!(a.next().await.expect("a's first").is_some());
        assert_eq!(names(&mut b).await.len(), count + 2);
        assert_eq!(names(&mut a).await.len(), count + 1);
    }

    #[tokio::test]
    async fn a_name_that_is_not_utf8_is_an_error_for_that_entry_only() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(std::ffi::OsStr::from_bytes(b"bad\xff")),
            b"",
        )
        .expect("file");
        std::fs::write(dir.path().join("good"), b"").expect("file");
        let top = std::fs::File::open(dir.path()).expect("open");
        let mut listing = Listing::open(&top).expect("listing");
        let (mut good, mut bad) = (0, 0);
        while let Some(entry) = listing.next().await.transpose() {
            match entry {
                Ok(entry) => good += usize::from(entry.name == "good"),
                Err(_) => bad += 1,
            }
        }
        assert_eq!((good, bad), (1, 1));
    }
}
