//! Removing a directory tree someone else filled: a deleted environment's workspace,
//! which its provider and the runtime it started wrote. std's `remove_dir_all`
//! recurses, one stack frame and one open directory per level, so a chain of
//! directories nested deeper than any path could name (a provider makes one through
//! WASI by walking down by descriptor) overflows the stack of the thread removing it,
//! which aborts the host, or runs the host out of open files first. [`remove_tree_at`]
//! walks down and back up without recursion, with a few descriptors open whatever the
//! depth, and follows no link.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// A directory's device and inode: which directory an open descriptor is.
type Identity = (libc::dev_t, libc::ino_t);

/// Removes the entry `name` of the directory `at` and, for a directory, everything
/// below it; a link or a file there is removed itself, and no link below it is
/// followed. `NotFound` when nothing is there. The host's memory grows by 16 bytes a
/// level (the directories above the one being emptied), never its stack or its open
/// files. `own_dirs` calls it with the parent reached through no link.
pub(crate) fn remove_tree_at(at: impl AsFd, name: &Path) -> io::Result<()> {
    let at = at.as_fd();
    if !is_directory(at, name)? {
        return Ok(unlinkat(at, name, UnlinkatFlags::NoRemoveDir)?);
    }
    let mut dir = open_dir(at, name)?;
    let mut above: Vec<Identity> = Vec::new();
    loop {
        if let Some(child) = empty_but_directories(&dir)? {
            let opened = open_dir(&dir, child.as_c_str())?;
            above.push(identity(&dir)?);
            dir = opened;
            continue;
        }
        // `dir` is empty: climb to its parent and remove it there.
        let Some(parent_was) = above.pop() else { break };
        let own = identity(&dir)?;
        let parent = open_dir(&dir, c"..")?;
        if identity(&parent)? != parent_was {
            // Moved while being emptied: its `..` is no longer the directory it was
            // found in, and nothing outside the tree is touched.
            return Err(io::Error::other(
                "a directory was moved out of the tree being removed",
            ));
        }
        let child = name_in(&parent, own)?;
        ignore_gone(unlinkat(
            &parent,
            child.as_c_str(),
            UnlinkatFlags::RemoveDir,
        ))?;
        dir = parent;
    }
    drop(dir);
    Ok(unlinkat(at, name, UnlinkatFlags::RemoveDir)?)
}

fn open_dir<P: ?Sized + nix::NixPath>(at: impl AsFd, path: &P) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(at, path, flags, Mode::empty())?)
}

fn identity(fd: impl AsFd) -> io::Result<Identity> {
    let stat = fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// Removes everything in `dir` up to its first subdirectory, and names that one.
fn empty_but_directories(dir: &OwnedFd) -> io::Result<Option<CString>> {
    // A fresh descriptor of its own reads from the start (what was removed on an
    // earlier visit is gone).
    let mut entries = Dir::from_fd(open_dir(dir, c".")?)?;
    for entry in entries.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            Some(kind) => kind == Type::Directory,
            None => match is_directory(dir, name) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                other => other?,
            },
        };
        if is_dir {
            return Ok(Some(name.to_owned()));
        }
        ignore_gone(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir))?;
    }
    Ok(None)
}

fn is_directory<P: ?Sized + nix::NixPath>(dir: impl AsFd, name: &P) -> io::Result<bool> {
    let stat = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// The name under which `parent` holds the directory `child`.
fn name_in(parent: &OwnedFd, child: Identity) -> io::Result<CString> {
    let mut entries = Dir::from_fd(open_dir(parent, c".")?)?;
    for entry in entries.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) if (stat.st_dev, stat.st_ino) == child => return Ok(name.to_owned()),
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(
        "a directory was moved out of the tree being removed",
    ))
}

/// Something already removed (by whoever else still writes there) is fine.
fn ignore_gone(result: nix::Result<()>) -> io::Result<()> {
    match result {
        Err(Errno::ENOENT) => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use nix::fcntl::AT_FDCWD;

    use super::*;

    #[test]
    fn removes_a_tree_deeper_than_a_recursive_removal_could_follow() {
        let top = tempfile::tempdir().expect("tempdir");
        let root = top.path().join("ws");
        std::fs::create_dir(&root).expect("root");
        // Walk down by descriptor, as a provider does: no path grows.
        let mut dir = open_dir(AT_FDCWD, &root).expect("open root");
        for _ in 0..20_000 {
            nix::sys::stat::mkdirat(&dir, c"d", Mode::S_IRWXU).expect("mkdir");
            let create = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
            openat(&dir, c"f", create, Mode::S_IRUSR).expect("file");
            dir = open_dir(&dir, c"d").expect("open");
        }
        drop(dir);
        let outside = top.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("kept"), "x").expect("kept");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("link");
        remove_tree_at(AT_FDCWD, &root).expect("removed");
        assert!(!root.exists());
        assert!(outside.join("kept").exists(), "a link was followed");
    }

    #[test]
    fn a_file_or_nothing_at_the_path() {
        let top = tempfile::tempdir().expect("tempdir");
        let file = top.path().join("f");
        std::fs::write(&file, "x").expect("file");
        remove_tree_at(AT_FDCWD, &file).expect("removed");
        assert!(!file.exists());
        let missing = remove_tree_at(AT_FDCWD, &file).expect_err("nothing there");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    /// What a random tree holds at one place: a directory to go into, a file, an
    /// empty file that is read-only, a link out of the tree to a directory, or to a
    /// file, outside.
    #[derive(Debug, Clone)]
    enum Entry {
        Dir(Vec<Entry>),
        File,
        ReadOnly,
        LinkToDir,
        LinkToFile,
    }

    fn entry() -> impl proptest::strategy::Strategy<Value = Entry> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Entry::File),
            Just(Entry::ReadOnly),
            Just(Entry::LinkToDir),
            Just(Entry::LinkToFile),
            Just(Entry::Dir(Vec::new())),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(Entry::Dir)
        })
    }

    fn make(at: &Path, entries: &[Entry], outside: &Path) {
        for (i, entry) in entries.iter().enumerate() {
            let path = at.join(format!("e{i}"));
            match entry {
                Entry::Dir(inner) => {
                    std::fs::create_dir(&path).expect("mkdir");
                    make(&path, inner, outside);
                }
                Entry::File => std::fs::write(&path, "x").expect("file"),
                Entry::ReadOnly => {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::write(&path, "").expect("file");
                    let read_only = std::fs::Permissions::from_mode(0o400);
                    std::fs::set_permissions(&path, read_only).expect("chmod");
                }
                Entry::LinkToDir => std::os::unix::fs::symlink(outside, &path).expect("link"),
                Entry::LinkToFile => {
                    std::os::unix::fs::symlink(outside.join("kept"), &path).expect("link")
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any tree of directories, files and links out of it is removed whole, and
        /// nothing a link points to is touched.
        #[test]
        fn any_tree_goes_and_nothing_its_links_reach(entries in proptest::collection::vec(entry(), 0..8)) {
            let top = tempfile::tempdir().expect("tempdir");
            let outside = top.path().join("outside");
            std::fs::create_dir_all(outside.join("inner")).expect("outside");
            std::fs::write(outside.join("kept"), "keep").expect("kept");
            let root = top.path().join("ws");
            std::fs::create_dir(&root).expect("root");
            make(&root, &entries, &outside);
            remove_tree_at(AT_FDCWD, &root).expect("removed");
            proptest::prop_assert!(std::fs::symlink_metadata(&root).is_err());
            proptest::prop_assert_eq!(std::fs::read_to_string(outside.join("kept")).ok(), Some("keep".to_owned()));
            proptest::prop_assert!(outside.join("inner").is_dir());
        }
    }
}
