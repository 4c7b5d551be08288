//! The cap on the disk a provider fills through WASI: each environment's workspace and
//! each provider's state directory may hold at most `[limits] workspace_mib` and
//! `state_mib`. A guest write that would pass it fails as a full disk does
//! (`insufficient-space`, `ENOSPC`), so the provider sees an error it already handles
//! and the host's disk, shared by every environment, is not filled by one of them.
//!
//! Usage is what a walk of the tree finds (every entry's disk blocks, at least
//! [`ENTRY_BYTES`] each, so empty files and links count too), plus what the guest has
//! asked to add since, counted generously (every byte written, even over old bytes;
//! every create, even of a file that was there). When that count reaches the cap the
//! tree is walked again, so what was overwritten, deleted or freed by anyone is seen;
//! walks are spaced (at least a second, and ten times the last walk's duration) so a
//! guest at its cap cannot keep the host walking. What the provider's children write
//! natively is not stopped (they are processes of the host's user), but it is on the
//! disk and counts at the next walk.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::dir::{Dir, OwningIter};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use crate::sync::MutexExt;

/// What an entry counts at least: a block, as an empty file or a short link takes an
/// inode and a directory entry, if no data block.
pub const ENTRY_BYTES: u64 = 4096;

/// Directories deeper than this make a tree count as full: the walk keeps one open
/// directory a level, and no provider needs more.
const MAX_DEPTH: usize = 256;

/// A device and inode: which directory a quota is about.
pub type Identity = (u64, u64);

/// `used` before the first walk.
const UNKNOWN: u64 = u64::MAX;

/// The cap on one directory tree, shared by every instance writing there.
pub(crate) struct DiskQuota {
    root: PathBuf,
    identity: Identity,
    limit: AtomicU64,
    /// The last walk's figure plus what was charged since; [`UNKNOWN`] before a walk.
    used: AtomicU64,
    /// Every byte ever charged: what came in during a walk is added to its figure.
    charged: AtomicU64,
    walks: tokio::sync::Mutex<Walks>,
    /// Writes refused, counted with every other quota's of the engine.
    refused: Arc<AtomicU64>,
}

#[derive(Default)]
struct Walks {
    /// When the last walk ended and how long it took.
    last: Option<(Instant, Duration)>,
}

/// Why a charge is refused.
#[derive(Debug, thiserror::Error)]
#[error("the quota of {bytes} bytes on {root} is used up")]
pub(crate) struct Full {
    root: PathBuf,
    bytes: u64,
}

impl DiskQuota {
    fn new(root: PathBuf, identity: Identity, limit: u64, refused: Arc<AtomicU64>) -> Self {
        Self {
            root,
            identity,
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(UNKNOWN),
            charged: AtomicU64::new(0),
            walks: tokio::sync::Mutex::new(Walks::default()),
            refused,
        }
    }

    /// The error a refused charge gets; the refusal is counted.
    pub(crate) fn full(&self) -> Full {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Full {
            root: self.root.clone(),
            bytes: self.limit.load(Ordering::Relaxed),
        }
    }

    /// Takes `bytes` if they fit the count as it stands; `false` when the count is not
    /// known yet or they do not fit (a walk may then find room).
    pub(crate) fn try_take(&self, bytes: u64) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used != UNKNOWN)
                    .then(|| used.checked_add(bytes))
                    .flatten()
                    .filter(|&after| after <= limit)
            });
        if taken.is_ok() {
            self.charged.fetch_add(bytes, Ordering::Relaxed);
        }
        taken.is_ok()
    }

    /// What may still be written as the count stands (0 when not known yet).
    pub(crate) fn room(&self) -> u64 {
        match self.used.load(Ordering::Acquire) {
            UNKNOWN => 0,
            used => self.limit.load(Ordering::Relaxed).saturating_sub(used),
        }
    }

    /// Takes `bytes`, walking the tree first when the count says they do not fit and a
    /// walk is due.
    pub(crate) async fn take(self: &Arc<Self>, bytes: u64) -> Result<(), Full> {
        if self.try_take(bytes) {
            return Ok(());
        }
        self.recount().await;
        if self.try_take(bytes) {
            Ok(())
        } else {
            Err(self.full())
        }
    }

    /// Whether [`DiskQuota::recount`] would walk now.
    pub(crate) fn walk_due(&self) -> bool {
        if self.used.load(Ordering::Acquire) == UNKNOWN {
            return true;
        }
        match self.walks.try_lock() {
            Ok(walks) => due(&walks, Instant::now()),
            // One is under way: waiting for it is worth it.
            Err(_) => true,
        }
    }

    /// Walks the tree and sets the count to what is there (plus what was charged while
    /// walking), unless a walk ended too recently; waits for a walk under way instead
    /// of starting another.
    pub(crate) async fn recount(self: &Arc<Self>) {
        let seen = self.charged.load(Ordering::Relaxed);
        let mut walks = self.walks.lock().await;
        let unknown = self.used.load(Ordering::Acquire) == UNKNOWN;
        if !unknown
            && (!due(&walks, Instant::now()) || self.charged.load(Ordering::Relaxed) != seen)
        {
            // Too soon, or another walk ended while this one waited its turn.
            return;
        }
        let started = Instant::now();
        let before = self.charged.load(Ordering::Relaxed);
        let (root, identity) = (self.root.clone(), self.identity);
        let stop_above = self.limit.load(Ordering::Relaxed);
        let found = tokio::task::spawn_blocking(move || usage(&root, identity, stop_above)).await;
        let found = match found {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                tracing::warn!(root = %self.root.display(), error = %e, "disk usage not counted; the tree counts as full");
                stop_above.saturating_add(1)
            }
            Err(e) => {
                tracing::warn!(root = %self.root.display(), error = %e, "disk usage walk failed; the tree counts as full");
                stop_above.saturating_add(1)
            }
        };
        let during = self.charged.load(Ordering::Relaxed).wrapping_sub(before);
        self.used.store(
            found.saturating_add(during).min(UNKNOWN - 1),
            Ordering::Release,
        );
        let ended = Instant::now();
        walks.last = Some((ended, ended - started));
        tracing::debug!(root = %self.root.display(), bytes = found, took_us = (ended - started).as_micros() as u64, "disk usage counted");
    }
}

/// Whether a walk may start at `now`: a second after the last, and ten times as long
/// as it took.
fn due(walks: &Walks, now: Instant) -> bool {
    walks.last.is_none_or(|(ended, took)| {
        now.duration_since(ended) >= Duration::from_secs(1).max(took.saturating_mul(10))
    })
}

/// The quotas in use, one per directory (by device and inode), so that every instance
/// writing a provider's state directory shares one count.
#[derive(Default)]
pub(crate) struct DiskQuotas {
    by_dir: Mutex<QuotaMap>,
    /// Writes refused by any of them since the engine started.
    refused: Arc<AtomicU64>,
}

#[derive(Default)]
struct QuotaMap {
    quotas: HashMap<Identity, Weak<DiskQuota>>,
    /// The map's size after it was last rid of quotas no instance holds.
    kept: usize,
}

impl DiskQuotas {
    /// Writes refused at a quota since the engine started.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The quota on the directory at `root` (device and inode `identity`), now capped
    /// at `limit` bytes (a changed setting applies to the instances already writing).
    pub(crate) fn on(&self, root: &Path, identity: Identity, limit: u64) -> Arc<DiskQuota> {
        let mut map = self.by_dir.locked();
        // The same directory; an inode reused at another path is another.
        let found = map.quotas.get(&identity).and_then(Weak::upgrade);
        if let Some(quota) = found.filter(|quota| quota.root == root) {
            quota.limit.store(limit, Ordering::Relaxed);
            return quota;
        }
        let refused = self.refused.clone();
        let quota = Arc::new(DiskQuota::new(root.to_owned(), identity, limit, refused));
        map.quotas.insert(identity, Arc::downgrade(&quota));
        // Amortised: quotas of ended instances go when the map has doubled.
        if map.quotas.len() >= 2 * map.kept.max(64) {
            map.quotas.retain(|_, quota| quota.strong_count() > 0);
            map.kept = map.quotas.len();
        }
        quota
    }
}

/// The bytes the tree at `root` takes on disk: every entry's blocks, at least
/// [`ENTRY_BYTES`] each, a file with several links once. Stops counting once past
/// `stop_above`. No link is followed; the root must be the directory `identity` names.
pub fn usage(root: &Path, identity: Identity, stop_above: u64) -> io::Result<u64> {
    let top = open_dir(AT_FDCWD, root)?;
    let stat = fstat(&top)?;
    if (stat.st_dev, stat.st_ino) != identity {
        return Err(io::Error::other(
            "another directory is there than the one the quota is on",
        ));
    }
    let mut total = counted(&stat);
    let mut linked: HashSet<Identity> = HashSet::new();
    // Each level: its entries being read, and a descriptor of its own to look them up
    // in (the reading one is the iterator's).
    let mut levels = vec![level(top)?];
    loop {
        let depth = levels.len();
        let Some((entries, dir)) = levels.last_mut() else {
            break;
        };
        let Some(entry) = entries.next() else {
            levels.pop();
            continue;
        };
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let stat = match fstatat(&*dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => continue,
            other => other?,
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        if kind != SFlag::S_IFDIR && stat.st_nlink > 1 && !linked.insert((stat.st_dev, stat.st_ino))
        {
            continue;
        }
        total = total.saturating_add(counted(&stat));
        if total > stop_above {
            return Ok(total);
        }
        if kind == SFlag::S_IFDIR {
            if depth >= MAX_DEPTH {
                return Err(io::Error::other(format!(
                    "directories nest deeper than {MAX_DEPTH} levels"
                )));
            }
            let below = match open_dir(&*dir, name) {
                // Gone, or swapped for something else, since it was seen.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                    ) =>
                {
                    continue;
                }
                other => other?,
            };
            levels.push(level(below)?);
        }
    }
    Ok(total)
}

/// A directory to read: its entries, and a descriptor to look them up in.
fn level(dir: OwnedFd) -> io::Result<(OwningIter, OwnedFd)> {
    let lookup = dir.try_clone()?;
    Ok((Dir::from_fd(dir)?.into_iter(), lookup))
}

/// What one entry counts.
fn counted(stat: &FileStat) -> u64 {
    (stat.st_blocks.max(0) as u64)
        .saturating_mul(512)
        .max(ENTRY_BYTES)
}

fn open_dir<P: ?Sized + nix::NixPath>(at: impl std::os::fd::AsFd, path: &P) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(at, path, flags, Mode::empty())?)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn identity(path: &Path) -> Identity {
        let meta = std::fs::metadata(path).expect("stat");
        (meta.dev(), meta.ino())
    }

    #[test]
    fn usage_counts_blocks_entries_and_a_linked_file_once() {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("ws");
        std::fs::create_dir_all(root.join("a/b")).expect("dirs");
        std::fs::write(root.join("a/b/big"), vec![7u8; 1 << 20]).expect("big");
        std::fs::write(root.join("empty"), "").expect("empty");
        std::fs::hard_link(root.join("a/b/big"), root.join("again")).expect("link");
        let outside = top.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("huge"), vec![1u8; 4 << 20]).expect("huge");
        std::os::unix::fs::symlink(&outside, root.join("out")).expect("symlink");
        let bytes = usage(&root, identity(&root), u64::MAX).expect("usage");
        // The megabyte once; the root, two directories, the empty file and the link
        // at least a block each; nothing behind the link.
        assert!(bytes >= (1 << 20) + 5 * ENTRY_BYTES, "{bytes}");
        assert!(bytes < (2 << 20), "{bytes}");
    }

    #[test]
    fn usage_stops_once_past_the_cap_and_refuses_another_directory() {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("ws");
        std::fs::create_dir(&root).expect("root");
        for i in 0..100 {
            std::fs::write(root.join(format!("f{i}")), "").expect("file");
        }
        let past = usage(&root, identity(&root), 10 * ENTRY_BYTES).expect("usage");
        assert_eq!(past, 11 * ENTRY_BYTES);
        let other = top.path().join("other");
        std::fs::create_dir(&other).expect("other");
        usage(&root, identity(&other), u64::MAX).expect_err("not the quota's directory");
    }

    #[test]
    fn a_tree_deeper_than_the_walk_goes_counts_as_an_error() {
        let top = tempfile::tempdir().expect("tempdir");
        let mut path = top.path().join("ws");
        let root = path.clone();
        for _ in 0..=MAX_DEPTH {
            path.push("d");
        }
        std::fs::create_dir_all(&path).expect("deep");
        usage(&root, identity(&root), u64::MAX).expect_err("too deep");
    }

    #[tokio::test]
    async fn a_quota_takes_until_full_and_a_walk_finds_what_was_freed() {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("ws");
        std::fs::create_dir(&root).expect("root");
        let quotas = DiskQuotas::default();
        let quota = quotas.on(&root, identity(&root), 64 * ENTRY_BYTES);
        assert!(!quota.try_take(1), "nothing is known before a walk");
        quota
            .take(ENTRY_BYTES)
            .await
            .expect("room after the first walk");
        std::fs::write(root.join("f"), vec![1u8; 40 * ENTRY_BYTES as usize]).expect("file");
        quota.take(40 * ENTRY_BYTES).await.expect("room");
        // Counted generously: the write above and the charge for it both count.
        assert!(quota.take(40 * ENTRY_BYTES).await.is_err());
        std::fs::remove_file(root.join("f")).expect("freed");
        // A walk is due only a second after the last.
        assert!(quota.take(40 * ENTRY_BYTES).await.is_err());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        quota
            .take(40 * ENTRY_BYTES)
            .await
            .expect("the walk saw the file go");
        // One quota per directory: another instance shares the count.
        let again = quotas.on(&root, identity(&root), 64 * ENTRY_BYTES);
        assert!(Arc::ptr_eq(&quota, &again));
    }
}
