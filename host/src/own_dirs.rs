//! The directories the host makes, writes in and removes under in the data directory
//! (`.codebolt/` and the ones below it), which anyone who may write the data directory
//! can swap for a symbolic link: followed, it would carry the host's writes, and its
//! removal of a deleted environment's workspace, to a directory elsewhere.
//!
//! A check of the path before the act would leave a window in which the swap still
//! works, so no act goes by path: [`open`] and [`create`] reach a directory from the
//! data directory one part at a time, each part opened relative to the descriptor of
//! the one before with `O_NOFOLLOW | O_DIRECTORY` (a link, or anything but a
//! directory, stops the walk and is named in the error), and the act is done relative
//! to the last descriptor ([`OwnDir`]: `mkdirat`, `openat`, `unlinkat`, `renameat`, and
//! `trees`' removal, which opens each directory it empties the same way, without
//! recursion). A part swapped after it was opened no longer matters: the descriptor is the
//! directory that was there. At start every directory is walked once (a link stops
//! the start). The files in them are opened through no link, as `untrusted` says.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::config::ServeConfig;

/// One of the host's directories, held open: what is done in it is done relative to
/// this descriptor, never to its path, which anyone may repoint meanwhile.
#[derive(Debug)]
pub(crate) struct OwnDir {
    fd: File,
    /// Where it was reached, for messages.
    path: PathBuf,
}

/// `dir` below `root`, each part opened through no link; a part not made yet is a
/// `NotFound` error. A `dir` outside `root` is the operator's choice (a cache
/// elsewhere) and opened as it is.
pub(crate) fn open(root: &Path, dir: &Path) -> io::Result<OwnDir> {
    Walk::start(root, dir, false)?.finish()
}

/// [`open`], making the parts not made yet (`mkdirat`, mode 0777 less the umask).
pub(crate) fn create(root: &Path, dir: &Path) -> io::Result<OwnDir> {
    Walk::start(root, dir, true)?.finish()
}

/// Checks that no directory of `dir` below `root` (`dir` included) is a symbolic link
/// or anything but a directory; a part not made yet is fine.
pub(crate) fn check(root: &Path, dir: &Path) -> io::Result<()> {
    match open(root, dir) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `path` (a directory below `root`, and everything in it) through its
/// parent opened by [`open`]: nothing along the way, nor in it, is followed if it is
/// a link (a link at `path` itself is removed, not what it points to). A parent that
/// is a link is an `InvalidInput` error naming it; a `path` not there, `NotFound`.
pub(crate) fn remove_dir_all(root: &Path, path: &Path) -> io::Result<()> {
    let (parent, name) = split(path)?;
    open(root, parent)?.remove_dir_all(name)
}

/// `path`'s parent and last part, which must be a plain name.
fn split(path: &Path) -> io::Result<(&Path, &str)> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no directory entry", path.display()),
        )),
    }
}

impl OwnDir {
    /// The names in it (not `.` and `..`), read through its descriptor.
    pub(crate) fn names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        let entries = cap_primitives::fs::read_dir(&self.fd, Path::new("."))?;
        entries.map(|entry| entry.map(|e| e.file_name())).collect()
    }

    /// Its device and inode, to know it again by.
    pub(crate) fn identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.fd.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Its directory `name`, made with `mode` if it is not there (less the umask; an
    /// existing one keeps its mode), opened through no link.
    pub(crate) fn child_with_mode(&self, name: &str, mode: u32) -> io::Result<OwnDir> {
        step(self, plain(name)?, true, Mode::from_bits_truncate(mode))
    }

    /// Removes its entry `name` and, for a directory, everything in it: each
    /// directory emptied is opened with `O_NOFOLLOW` relative to the one above, so a
    /// link anywhere is removed, never followed, and however deep a provider nested
    /// it, without recursion (`trees`).
    pub(crate) fn remove_dir_all(&self, name: &str) -> io::Result<()> {
        crate::trees::remove_tree_at(&self.fd, Path::new(plain(name)?))
    }

    /// Removes its file `name` (a link there is removed, not followed).
    pub(crate) fn remove_file(&self, name: &str) -> io::Result<()> {
        nix::unistd::unlinkat(
            &self.fd,
            plain(name)?,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(io::Error::from)
    }

    /// Renames its entry `from` to `to`, both in it.
    pub(crate) fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        nix::fcntl::renameat(&self.fd, plain(from)?, &self.fd, plain(to)?).map_err(io::Error::from)
    }

    /// What its entry `name` is, not following a link.
    pub(crate) fn kind_of(&self, name: &str) -> io::Result<nix::sys::stat::SFlag> {
        let stat = nix::sys::stat::fstatat(
            &self.fd,
            plain(name)?,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        Ok(nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode) & nix::sys::stat::SFlag::S_IFMT)
    }

    /// Opens its entry `name` with `flags` (and `mode` when made), never through a link
    /// (`O_NOFOLLOW`) and without waiting on a named pipe (`O_NONBLOCK`; the caller
    /// checks what it opened: see `untrusted`).
    pub(crate) fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(
            &self.fd,
            plain(name)?,
            flags,
            Mode::from_bits_truncate(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Where it was reached, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces its file `name` with `bytes` all at once, as `atomic::replace_file`
    /// does (a hidden temporary beside it, owner only, synced, renamed over it, the
    /// directory synced), every step relative to this descriptor.
    pub(crate) fn replace_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = format!(".{}.{:016x}", plain(name)?, rand::random::<u64>());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let written = self.open_file(&tmp, flags, 0o600).and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()?;
            self.rename(&tmp, name)
        });
        if written.is_err() {
            let _ = self.remove_file(&tmp);
        }
        written?;
        self.fd.sync_all()
    }

    /// The path of its entry `name`, for messages.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// `name` if it is one plain part of a path (no `/`, `.`, `..`): an act in a directory
/// never reaches beyond it.
fn plain(name: &str) -> io::Result<&str> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Ok(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain name"),
        )),
    }
}

/// Opens `name` in `at` with `O_NOFOLLOW | O_DIRECTORY`, making it first (`mkdirat`,
/// `mode`) when `create` and it is not there.
fn step(at: &OwnDir, name: &str, create: bool, mode: Mode) -> io::Result<OwnDir> {
    let path = at.path.join(name);
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let opened = match nix::fcntl::openat(&at.fd, name, flags, Mode::empty()) {
        Err(Errno::ENOENT) if create => {
            match nix::sys::stat::mkdirat(&at.fd, name, mode) {
                // Made meanwhile by another of the host's tasks: opened as it is.
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
            nix::fcntl::openat(&at.fd, name, flags, Mode::empty())
        }
        opened => opened,
    };
    match opened {
        Ok(fd) => Ok(OwnDir {
            fd: File::from(fd),
            path,
        }),
        // A link under O_NOFOLLOW is ELOOP, or ENOTDIR with O_DIRECTORY; which of
        // the two it was is told by what is there (for the message only).
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            let link = at
                .kind_of(name)
                .is_ok_and(|k| k == nix::sys::stat::SFlag::S_IFLNK);
            Err(refusal(
                &path,
                if link {
                    "a symbolic link"
                } else {
                    "not a directory"
                },
            ))
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

/// A walk from `root` down to a directory, one part at a time (the test below
/// swaps a part between two steps).
struct Walk<'a> {
    at: OwnDir,
    rest: std::path::Components<'a>,
    create: bool,
}

impl<'a> Walk<'a> {
    /// At `root` (opened as it is: the operator's), or at `dir` itself when it is
    /// not below `root`.
    fn start(root: &Path, dir: &'a Path, create: bool) -> io::Result<Self> {
        let (start, rest) = match dir.strip_prefix(root) {
            Ok(below) => (root, below),
            Err(_) => (dir, Path::new("")),
        };
        if create && !start.exists() {
            std::fs::create_dir_all(start)?;
        }
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(start)?;
        Ok(Self {
            at: OwnDir {
                fd,
                path: start.to_owned(),
            },
            rest: rest.components(),
            create,
        })
    }

    /// Opens the next part; `false` once there is none.
    fn step(&mut self) -> io::Result<bool> {
        let Some(part) = self.rest.next() else {
            return Ok(false);
        };
        let Component::Normal(name) = part else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is no plain path below the data directory",
                    self.at.path.display()
                ),
            ));
        };
        let name = name.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a directory name that is not UTF-8",
            )
        })?;
        self.at = step(&self.at, name, self.create, Mode::from_bits_truncate(0o777))?;
        Ok(true)
    }

    fn finish(mut self) -> io::Result<OwnDir> {
        while self.step()? {}
        Ok(self.at)
    }
}

/// The host's directories under the data directory of `config`, for the check at
/// start. `.codebolt/deleting` is left to its own check (a link there only stops
/// the delete marks, as before).
fn at_start(config: &ServeConfig) -> Vec<PathBuf> {
    let codebolt = config.codebolt_dir();
    let mut dirs: Vec<PathBuf> = [
        "",
        "environments",
        "logs",
        "provider-state",
        "providers",
        "cluster",
        "removal-workspaces",
    ]
    .iter()
    .map(|name| codebolt.join(name))
    .collect();
    dirs.extend(config.compile_cache.dir.clone());
    dirs
}

/// At start: the first of the host's directories that is a link (or no directory),
/// as the error that stops the start.
pub(crate) fn check_at_start(config: &ServeConfig) -> io::Result<()> {
    at_start(config)
        .iter()
        .try_for_each(|dir| check(&config.data_dir, dir))
}

fn refusal(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is {what}, not the host's directory; remove it",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dir` moved aside (to `<dir>.aside`) and a link to `target` put in its place.
    fn swap_for_link(dir: &Path, target: &Path) {
        let mut aside = dir.as_os_str().to_owned();
        aside.push(".aside");
        std::fs::rename(dir, aside).unwrap();
        std::os::unix::fs::symlink(target, dir).unwrap();
    }

    /// A directory `victim` holding a file, in `dir`.
    fn victim_in(dir: &Path) -> PathBuf {
        let victim = dir.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("precious"), "keep\n").unwrap();
        victim
    }

    #[test]
    fn a_link_anywhere_below_the_root_is_refused_a_missing_part_is_not() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let root = root.path();
        assert!(check(root, &root.join(".codebolt/logs")).is_ok());
        create(root, &root.join(".codebolt/environments")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.join(".codebolt/logs")).unwrap();
        let e = check(root, &root.join(".codebolt/logs/deeper")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        let e = create(root, &root.join(".codebolt/logs/deeper")).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "{} is a symbolic link, not the host's directory; remove it",
                root.join(".codebolt/logs").display()
            )),
            "{e}"
        );
        assert!(!elsewhere.path().join("deeper").exists());
        std::fs::write(root.join(".codebolt/providers"), "").unwrap();
        let e = check(root, &root.join(".codebolt/providers")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = remove_dir_all(root, &root.join(".codebolt/logs/victim")).unwrap_err();
        assert!(e.to_string().contains("is a symbolic link"), "{e}");
        // Outside the root: the operator's, not checked.
        assert!(check(root, elsewhere.path()).is_ok());
    }

    /// The race a check of the path left open: a part of the path swapped for a link
    /// after it was checked (here: after its parent was opened, and after it was
    /// opened itself) and before the act. The walk refuses the link it meets; an act
    /// on a directory already opened stays in it, whatever its path points to now.
    #[test]
    fn a_part_swapped_for_a_link_between_the_steps_of_a_walk_carries_no_act_elsewhere() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = root.path();
        let environments = root.join(".codebolt/environments");
        victim_in(&environments);
        let outside_victim = victim_in(outside.path());

        // Swapped once `.codebolt` is open, before `environments` is.
        let mut walk = Walk::start(root, &environments, true).unwrap();
        assert!(walk.step().unwrap());
        assert_eq!(walk.at.path, root.join(".codebolt"));
        swap_for_link(&environments, outside.path());
        let e = walk.step().unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "{} is a symbolic link, not the host's directory; remove it",
                environments.display()
            )),
            "{e}"
        );
        assert!(remove_dir_all(root, &environments.join("victim")).is_err());
        assert!(create(root, &environments.join("new")).is_err());
        assert!(outside_victim.join("precious").exists());
        assert!(!outside.path().join("new").exists());

        // Swapped once `environments` itself is open: the acts happen in the directory
        // that was opened (now `environments.aside`), not in the link's target.
        std::fs::remove_file(&environments).unwrap();
        std::fs::rename(root.join(".codebolt/environments.aside"), &environments).unwrap();
        let opened = open(root, &environments).unwrap();
        swap_for_link(&environments, outside.path());
        opened.remove_dir_all("victim").unwrap();
        opened.child_with_mode("new", 0o777).unwrap();
        let aside = root.join(".codebolt/environments.aside");
        assert!(!aside.join("victim").exists());
        assert!(aside.join("new").is_dir());
        assert!(outside_victim.join("precious").exists());
        assert!(!outside.path().join("new").exists());
    }

    /// The names in a directory are read through its descriptor: those of the
    /// directory opened, not of the one its path names now.
    #[test]
    fn names_are_those_of_the_directory_opened() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = root.path();
        let deleting = root.join(".codebolt/deleting");
        std::fs::create_dir_all(&deleting).unwrap();
        std::fs::write(deleting.join("mine"), "").unwrap();
        std::fs::write(outside.path().join("theirs"), "").unwrap();
        let opened = open(root, &deleting).unwrap();
        swap_for_link(&deleting, outside.path());
        assert_eq!(opened.names().unwrap(), ["mine"]);
        opened.remove_file("mine").unwrap();
        assert!(opened.remove_file("theirs").is_err());
        assert!(outside.path().join("theirs").exists());
    }

    /// A link inside the directory removed (or in its place) is removed, never
    /// followed.
    #[test]
    fn a_removal_removes_links_inside_and_does_not_follow_them() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = root.path();
        let outside_victim = victim_in(outside.path());
        let workspace = root.join(".codebolt/environments/w");
        std::fs::create_dir_all(workspace.join("deep")).unwrap();
        std::os::unix::fs::symlink(&outside_victim, workspace.join("deep/link")).unwrap();
        remove_dir_all(root, &workspace).unwrap();
        assert!(!workspace.exists());
        std::os::unix::fs::symlink(&outside_victim, &workspace).unwrap();
        remove_dir_all(root, &workspace).unwrap();
        assert!(std::fs::symlink_metadata(&workspace).is_err());
        assert!(outside_victim.join("precious").exists());
        let e = remove_dir_all(root, &workspace).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    /// A thread swapping the workspaces' directory for a link to a directory elsewhere
    /// and back, as fast as it can, against removals of a workspace: the directory
    /// elsewhere keeps its own `victim`. (A check of the path, then a removal by path,
    /// lost it here within a few thousand rounds.)
    #[test]
    fn removals_raced_by_a_swapping_thread_never_remove_anything_elsewhere() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = root.path().to_owned();
        let codebolt = root.join(".codebolt");
        let environments = codebolt.join("environments");
        let (real, link) = (codebolt.join("real"), codebolt.join("link"));
        std::fs::create_dir_all(&environments).unwrap();
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let outside_victim = victim_in(outside.path());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        // Renames only, so `environments` is always one or the other.
        let swapper = {
            let (stop, environments) = (stop.clone(), environments.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::rename(&environments, &real);
                    let _ = std::fs::rename(&link, &environments);
                    let _ = std::fs::rename(&environments, &link);
                    let _ = std::fs::rename(&real, &environments);
                }
            })
        };
        let mut removed = 0;
        for _ in 0..20_000 {
            if std::fs::create_dir_all(environments.join("victim/inside")).is_err() {
                continue;
            }
            if remove_dir_all(&root, &environments.join("victim")).is_ok() {
                removed += 1;
            }
            if !outside_victim.join("precious").exists() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(
            outside_victim.join("precious").exists(),
            "a removal went through the link (after {removed} removals)"
        );
        assert!(removed > 0, "no removal was tried");
    }
}
