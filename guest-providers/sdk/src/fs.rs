//! The workspace file handlers behind the default `read-file`, `write-file`,
//! `delete-file`, `create-folder` and `rename-item`, and the path rules they share.
//!
//! Paths come from apps and are relative to the workspace directory named by
//! `init-vars.workspace-dir` (a WASI preopened directory such as `/workspace`).
//! [`resolve`] rejects empty and absolute paths, `..` components and NUL bytes
//! before anything touches the filesystem; the WASI preopen is the second layer
//! that keeps every access (symlinks included) inside the workspace. It also
//! rejects any `.git` component: git metadata (config, hooks, the worktree's
//! `.git` pointer) decides what git runs, so apps may neither read nor write it.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use std::cell::RefCell;

use crate::{ProviderError, context};

thread_local! {
    /// Where the file handlers work when not in the workspace (see [`serve_files_from`]).
    static FILES_ROOT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Makes the file handlers ([`resolve`] and everything built on it) work in `dir`
/// instead of the workspace, e.g. a git worktree inside a granted project directory.
/// `dir` must be inside a directory the host preopened for this instance.
pub fn serve_files_from(dir: PathBuf) {
    FILES_ROOT.with(|root| *root.borrow_mut() = Some(dir));
}

/// The directory app paths are relative to: the one given to [`serve_files_from`],
/// else the workspace.
pub fn files_root() -> Result<PathBuf, ProviderError> {
    match FILES_ROOT.with(|root| root.borrow().clone()) {
        Some(dir) => Ok(dir),
        None => workspace_dir(),
    }
}

/// The workspace directory of the current start, as the provider sees it.
///
/// Fails with `failed` before the first `on-provider-start` of this instance.
pub fn workspace_dir() -> Result<PathBuf, ProviderError> {
    match context::init_vars() {
        Some(init) if !init.workspace_dir.is_empty() => Ok(PathBuf::from(init.workspace_dir)),
        Some(_) => Err(ProviderError::failed(
            "the host gave no workspace directory",
        )),
        None => Err(ProviderError::failed(
            "no workspace yet: the provider has not been started in this instance",
        )),
    }
}

/// Checks an app-supplied workspace path and returns it normalised (without `.`
/// components), still relative.
///
/// Rejects, as `invalid-input`: an empty path, a NUL byte, an absolute path, any
/// `..` component, any `.git` component (in any case), and a path that names the
/// workspace itself.
pub fn check_relative(path: &str) -> Result<PathBuf, ProviderError> {
    if path.is_empty() {
        return Err(ProviderError::invalid_input("path is empty"));
    }
    if path.contains('\0') {
        return Err(ProviderError::invalid_input("path contains a NUL byte"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) if name.eq_ignore_ascii_case(".git") => {
                return Err(ProviderError::invalid_input(format!(
                    "path names git metadata (.git), which apps may not touch: {path}"
                )));
            }
            Component::Normal(name) => relative.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ProviderError::invalid_input(format!(
                    "path escapes the workspace: {path}"
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ProviderError::invalid_input(format!(
                    "path must be relative to the workspace, not absolute: {path}"
                )));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(ProviderError::invalid_input(format!(
            "path names the workspace itself: {path}"
        )));
    }
    Ok(relative)
}

/// Checks an app-supplied path with [`check_relative`] and joins it onto the
/// [`files_root`] (the workspace unless the provider chose another directory).
pub fn resolve(path: &str) -> Result<PathBuf, ProviderError> {
    let relative = check_relative(path)?;
    Ok(files_root()?.join(relative))
}

/// Reads a workspace file as UTF-8 text.
pub fn read_file(path: &str) -> Result<String, ProviderError> {
    let full = resolve(path)?;
    let bytes = fs::read(&full)
        .map_err(|err| ProviderError::from_io(&err, format!("cannot read {path}")))?;
    String::from_utf8(bytes).map_err(|_| ProviderError::failed(format!("{path} is not UTF-8 text")))
}

/// Writes a workspace file, creating its parent folders; an existing file is
/// replaced.
pub fn write_file(path: &str, content: &str) -> Result<(), ProviderError> {
    let full = resolve(path)?;
    create_parent(&full, path)?;
    fs::write(&full, content)
        .map_err(|err| ProviderError::from_io(&err, format!("cannot write {path}")))
}

/// Deletes a workspace file. A folder is deleted with everything in it; a
/// symbolic link is removed, never followed.
pub fn delete_file(path: &str) -> Result<(), ProviderError> {
    let full = resolve(path)?;
    let metadata = fs::symlink_metadata(&full)
        .map_err(|err| ProviderError::from_io(&err, format!("cannot delete {path}")))?;
    let result = if metadata.is_dir() {
        fs::remove_dir_all(&full)
    } else {
        fs::remove_file(&full)
    };
    result.map_err(|err| ProviderError::from_io(&err, format!("cannot delete {path}")))
}

/// Creates a workspace folder and its parents; an existing folder is fine.
pub fn create_folder(path: &str) -> Result<(), ProviderError> {
    let full = resolve(path)?;
    fs::create_dir_all(&full)
        .map_err(|err| ProviderError::from_io(&err, format!("cannot create folder {path}")))
}

/// Renames (moves) a file or folder inside the workspace, creating the parent
/// folders of the new path. Refuses to replace something that already exists.
pub fn rename_item(old_path: &str, new_path: &str) -> Result<(), ProviderError> {
    let from = resolve(old_path)?;
    let to = resolve(new_path)?;
    fs::symlink_metadata(&from)
        .map_err(|err| ProviderError::from_io(&err, format!("cannot rename {old_path}")))?;
    match fs::symlink_metadata(&to) {
        Ok(_) => {
            return Err(ProviderError::invalid_input(format!(
                "cannot rename {old_path} to {new_path}: {new_path} already exists"
            )));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(ProviderError::from_io(
                &err,
                format!("cannot rename to {new_path}"),
            ));
        }
    }
    create_parent(&to, new_path)?;
    fs::rename(&from, &to).map_err(|err| {
        ProviderError::from_io(&err, format!("cannot rename {old_path} to {new_path}"))
    })
}

/// Removes every entry inside `dir` but keeps `dir` itself. Folders are removed
/// with their contents and symbolic links are removed, never followed. Keeps
/// going past failures and reports how many entries could not be removed.
pub fn remove_dir_contents(dir: &Path) -> Result<(), ProviderError> {
    let shown = dir.display();
    let entries = fs::read_dir(dir)
        .map_err(|err| ProviderError::from_io(&err, format!("cannot list {shown}")))?;
    let mut failures = 0_usize;
    let mut first_error: Option<ProviderError> = None;
    for entry in entries {
        let result = entry.and_then(|entry| {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
        });
        if let Err(err) = result {
            failures += 1;
            first_error.get_or_insert_with(|| {
                ProviderError::from_io(&err, format!("cannot empty {shown}"))
            });
        }
    }
    match first_error {
        None => Ok(()),
        Some(err) if failures == 1 => Err(err),
        Some(err) => Err(ProviderError::failed(format!(
            "{} (and {} more entries could not be removed)",
            err.message(),
            failures - 1
        ))),
    }
}

/// Creates the parent folders of `full` (`shown` is the path as the app gave it).
fn create_parent(full: &Path, shown: &str) -> Result<(), ProviderError> {
    match full.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(|err| {
            ProviderError::from_io(&err, format!("cannot create the folders for {shown}"))
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InitVars;

    fn rejected(path: &str) -> String {
        match check_relative(path) {
            Err(ProviderError::InvalidInput(message)) => message,
            other => panic!("{path:?} was not rejected: {other:?}"),
        }
    }

    #[test]
    fn path_rules() {
        assert_eq!(
            rejected("../../etc/passwd"),
            "path escapes the workspace: ../../etc/passwd"
        );
        assert_eq!(
            rejected("a/../../b"),
            "path escapes the workspace: a/../../b"
        );
        assert!(rejected("/etc/passwd").contains("not absolute"));
        assert_eq!(rejected(""), "path is empty");
        assert_eq!(rejected("a\0b"), "path contains a NUL byte");
        assert!(rejected("./.").contains("workspace itself"));
        for git in [
            ".git",
            ".git/config",
            "./.git/hooks/pre-commit",
            "sub/.GIT/x",
        ] {
            assert!(rejected(git).contains("git metadata"), "{git}");
        }
        assert!(check_relative(".gitignore").is_ok());
        assert_eq!(
            check_relative("./src//main.rs").ok(),
            Some(PathBuf::from("src/main.rs"))
        );
    }

    #[test]
    fn handlers_work_inside_the_workspace() {
        let root = std::env::temp_dir().join(format!("tether-sdk-fs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        assert!(fs::create_dir_all(&root).is_ok());
        context::set_init_vars(InitVars {
            environment_id: "e".into(),
            environment_name: "e".into(),
            config: "{}".into(),
            resource_id: None,
            runtime_url: "ws://127.0.0.1/ws".into(),
            runtime_token: "t".into(),
            project_path: None,
            workspace_dir: root.display().to_string(),
            workspace_host_path: root.display().to_string(),
        });

        assert!(write_file("a/b/c.txt", "hello").is_ok());
        assert_eq!(read_file("a/b/c.txt").ok().as_deref(), Some("hello"));
        assert!(matches!(
            read_file("nope.txt"),
            Err(ProviderError::NotFound(_))
        ));
        assert!(create_folder("d/e").is_ok());
        assert!(rename_item("a/b/c.txt", "x/y.txt").is_ok());
        assert!(matches!(
            rename_item("x/y.txt", "a"),
            Err(ProviderError::InvalidInput(_))
        ));
        assert!(matches!(
            rename_item("missing", "z"),
            Err(ProviderError::NotFound(_))
        ));
        assert_eq!(read_file("x/y.txt").ok().as_deref(), Some("hello"));
        assert!(delete_file("x/y.txt").is_ok());
        assert!(delete_file("d").is_ok());
        assert!(matches!(delete_file("d"), Err(ProviderError::NotFound(_))));
        assert!(remove_dir_contents(&root).is_ok());
        assert_eq!(fs::read_dir(&root).map(Iterator::count).ok(), Some(0));
        let _ = fs::remove_dir_all(&root);
    }
}

/// Writes `name` (one file name, no folders) whole in the preopened directory `dir`
/// (the path the guest sees it at, such as the workspace's `/workspace`): into a
/// temporary file first, then renamed over `name`, so a reader never sees half of it.
///
/// Unlike `std::fs`, which keeps every preopened directory open for the rest of the
/// instance's life once it touches one, this works through handles opened for the
/// call and dropped before it returns: an instance that writes only this way holds no
/// descriptor on the host while it waits, which counts on a host running thousands.
pub fn write_whole(dir: &str, name: &str, bytes: &[u8]) -> Result<(), ProviderError> {
    use wasip2::filesystem::preopens::get_directories;
    use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};

    // Exactly one plain name: `name` itself is what is opened and renamed below.
    if check_relative(name)?.as_os_str() != name || name.contains('/') {
        return Err(ProviderError::invalid_input(format!(
            "{name} is not one file name"
        )));
    }
    let failed = |what: &str, e: wasip2::filesystem::types::ErrorCode| {
        ProviderError::failed(format!("{what} {name} in {dir}: {e}"))
    };
    let Some((root, _)) = get_directories().into_iter().find(|(_, at)| at == dir) else {
        return Err(ProviderError::not_found(format!(
            "{dir} is not a preopened directory"
        )));
    };
    let tmp = format!(".{name}.tmp");
    let file = root
        .open_at(
            PathFlags::empty(),
            &tmp,
            OpenFlags::CREATE | OpenFlags::TRUNCATE,
            DescriptorFlags::WRITE,
        )
        .map_err(|e| failed("creating a temporary file for", e))?;
    let mut written = 0;
    while written < bytes.len() {
        let n = file
            .write(&bytes[written..], written as u64)
            .map_err(|e| failed("writing", e))?;
        if n == 0 {
            return Err(ProviderError::failed(format!(
                "writing {name} in {dir}: no progress"
            )));
        }
        written += usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(bytes.len() - written);
    }
    drop(file);
    root.rename_at(&tmp, &root, name)
        .map_err(|e| failed("renaming into place", e))
}
