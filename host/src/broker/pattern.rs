//! Command patterns at work: whether a command matches a granted or requested
//! [`CommandPattern`] (parsed and validated in `config`), whether one pattern covers
//! another, and [`PathScope`], where its `{path}` arguments may point.

use std::path::{Path, PathBuf};

use crate::config::{ANY_ARG, ANY_REST, CommandPattern, PATH_ARG, is_rest};

fn is_option(arg: &str) -> bool {
    arg.starts_with('-')
}

/// Whether one argument matches one (non-rest) pattern.
fn matches_one(pattern: &str, arg: &str, paths: &PathScope) -> bool {
    match pattern {
        ANY_ARG => true,
        "*" => !is_option(arg),
        // `{path}`, or an option prefix then `{path}` (`--output={path}`).
        p if p.ends_with(PATH_ARG) => {
            let prefix = &p[..p.len() - PATH_ARG.len()];
            arg.strip_prefix(prefix)
                .is_some_and(|path| !is_option(path) && paths.contains(path))
        }
        p => p == arg,
    }
}

/// Whether every argument the (non-rest) pattern `theirs` matches is matched by
/// the (non-rest) pattern `mine`.
fn covers_one(mine: &str, theirs: &str) -> bool {
    match mine {
        ANY_ARG => true,
        // `*` covers `*`, `{path}` and any literal or prefix that is not an option.
        "*" => !is_rest(theirs) && theirs != ANY_ARG && !is_option(theirs),
        m => m == theirs,
    }
}

impl CommandPattern {
    /// Whether `program args...` matches this pattern, with `{path}` arguments
    /// checked against `paths`.
    pub fn matches(&self, program: &str, args: &[String], paths: &PathScope) -> bool {
        if self.program() != "*" && self.program() != program {
            return false;
        }
        let mut given = args.iter();
        for pattern in self.args() {
            if pattern == ANY_REST {
                return true;
            }
            if pattern == "**" {
                return given.all(|a| !is_option(a));
            }
            match given.next() {
                Some(arg) if matches_one(pattern, arg, paths) => {}
                _ => return false,
            }
        }
        given.next().is_none()
    }

    /// Whether every command `other` matches is matched by `self` too.
    pub fn covers(&self, other: &CommandPattern) -> bool {
        if self.program() != "*" && self.program() != other.program() {
            return false;
        }
        let mut theirs = other.args().iter();
        for mine in self.args() {
            if mine == ANY_REST {
                return true;
            }
            if mine == "**" {
                return theirs.all(|t| t == "**" || covers_one("*", t));
            }
            match theirs.next() {
                Some(t) if !is_rest(t) && covers_one(mine, t) => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }
}

/// Where the `{path}` arguments of one spawn may point: inside the environment's
/// directories (its workspace and the granted directories), relative paths taken
/// from the spawn's working directory.
#[derive(Debug, Clone, Default)]
pub struct PathScope {
    cwd: PathBuf,
    roots: Vec<PathBuf>,
}

impl PathScope {
    /// A scope over `roots` (canonicalised here; missing ones are dropped) for a
    /// process working in `cwd`.
    pub fn new(cwd: PathBuf, roots: &[PathBuf]) -> Self {
        let roots = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
        Self { cwd, roots }
    }

    /// Whether `arg` names a path inside the roots. It may not exist yet (a path
    /// to create), but it may not contain `..`, and its longest existing ancestor,
    /// with symlinks resolved (by [`resolve`]), must lie inside a root.
    pub fn contains(&self, arg: &str) -> bool {
        let path = Path::new(arg);
        if arg.is_empty()
            || arg.contains('\0')
            || path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return false;
        }
        resolve(&self.cwd.join(path))
            .is_some_and(|real| self.roots.iter().any(|root| real.starts_with(root)))
    }
}

/// Symlinks followed at most while resolving one path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// The longest existing part of `path` with every symlink resolved, as the child
/// will find it; `None` when the child might find something else. Resolved by hand
/// rather than by `realpath`, because two things must be seen on the way:
/// - a symlink that leads nowhere (or loops): the child would follow it and create
///   what it points to, wherever that is, and the part before it says nothing of that;
/// - `/proc`, reached directly or through a link (`/dev/fd`, or one a provider planted
///   pointing at `../../proc/self/cwd`): its links (`self/cwd`, `self/fd/N`,
///   `self/root`) name the host's directories while the host checks, and the child's
///   own when the child opens them.
fn resolve(path: &Path) -> Option<PathBuf> {
    use std::collections::VecDeque;
    use std::path::Component;
    let mut resolved = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().ok()?
    };
    let mut pending: VecDeque<std::ffi::OsString> = VecDeque::new();
    let push_front = |pending: &mut VecDeque<_>, p: &Path| {
        for c in p.components().rev() {
            pending.push_front(c.as_os_str().to_owned());
        }
    };
    push_front(&mut pending, path);
    // How many of `pending`'s first components came from a link's target.
    let mut from_links = 0usize;
    let mut links = 0usize;
    while let Some(part) = pending.pop_front() {
        let in_link = from_links > 0;
        from_links = from_links.saturating_sub(1);
        match Path::new(&part).components().next() {
            Some(Component::RootDir) => resolved = PathBuf::from("/"),
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Normal(name)) => {
                let next = resolved.join(name);
                if next.starts_with("/proc") {
                    return None;
                }
                match next.symlink_metadata() {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        links += 1;
                        if links > MAX_LINKS {
                            return None;
                        }
                        let target = std::fs::read_link(&next).ok()?;
                        let before = pending.len();
                        push_front(&mut pending, &target);
                        from_links += pending.len() - before;
                    }
                    Ok(_) => resolved = next,
                    // The rest of the provider's path does not exist yet: it is made
                    // under what exists. Inside a link's target, the link dangles.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !in_link => {
                        return Some(resolved);
                    }
                    Err(_) => return None,
                }
            }
            _ => {}
        }
    }
    Some(resolved)
}

/// Shorthands for the broker's tests, here and in `broker/mod.rs`.
#[cfg(test)]
pub(super) mod test_support {
    use super::*;

    /// A command pattern from string slices.
    pub(in crate::broker) fn pat(program: &str, args: &[&str]) -> CommandPattern {
        CommandPattern::new(program.into(), args.iter().map(|s| s.to_string()).collect()).unwrap()
    }

    /// No directories: `{path}` matches nothing.
    pub(in crate::broker) fn none() -> PathScope {
        PathScope::default()
    }

    /// Owned arguments from string slices.
    pub(in crate::broker) fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{args, none, pat};
    use super::*;
    use crate::config::PatternError;

    #[test]
    fn patterns_match_exact_one_and_rest() {
        let p = pat("git", &["worktree", "*", "**"]);
        assert!(p.matches("git", &args(&["worktree", "add", "x", "y"]), &none()));
        assert!(p.matches("git", &args(&["worktree", "list"]), &none()));
        assert!(!p.matches("git", &args(&["worktree"]), &none()));
        assert!(!p.matches("git", &args(&["status"]), &none()));
        assert!(!p.matches("sh", &args(&["worktree", "add"]), &none()));
        let exact = pat("tether", &["runtime"]);
        assert!(exact.matches("tether", &args(&["runtime"]), &none()));
        assert!(!exact.matches("tether", &args(&["runtime", "--evil"]), &none()));
        assert!(!exact.matches("tether", &args(&[]), &none()));
    }

    #[test]
    fn wildcards_never_match_options_unless_the_pattern_says_so() {
        let root = tempfile::tempdir().unwrap();
        let scope = PathScope::new(root.path().to_owned(), &[root.path().to_owned()]);
        // The smuggled second `--output`.
        let diff = pat("git", &["diff", "--output={path}", "*"]);
        assert!(diff.matches("git", &args(&["diff", "--output=ok", "HEAD"]), &scope));
        assert!(!diff.matches(
            "git",
            &args(&["diff", "--output=ok", "--output=/any/file"]),
            &scope
        ));
        // `{path}` is never an option, even one that reads as a relative path.
        assert!(!pat("git", &[PATH_ARG]).matches("git", &args(&["--upload-pack=x"]), &scope));
        assert!(!diff.matches("git", &args(&["diff", "--output=-x", "HEAD"]), &scope));
        let rest = pat("git", &["log", "**"]);
        assert!(rest.matches("git", &args(&["log", "a", "b"]), &none()));
        assert!(rest.matches("git", &args(&["log"]), &none()));
        assert!(!rest.matches("git", &args(&["log", "a", "--exec=x"]), &none()));
        assert!(!rest.matches("git", &args(&["log", "-"]), &none()));
        // Spelled out: `{any}` one argument, `{any...}` the rest, options included.
        let any = pat("sh", &["-c", ANY_ARG]);
        assert!(any.matches("sh", &args(&["-c", "-x"]), &none()));
        assert!(!any.matches("sh", &args(&["-c"]), &none()));
        let everything = pat("x", &[ANY_REST]);
        assert!(everything.matches("x", &args(&["--a", "b"]), &none()));
        assert!(everything.matches("x", &args(&[]), &none()));
        // Coverage follows the same rule.
        assert!(pat("git", &["*"]).covers(&pat("git", &["HEAD"])));
        assert!(pat("git", &["*"]).covers(&pat("git", &[PATH_ARG])));
        assert!(!pat("git", &["*"]).covers(&pat("git", &["--force"])));
        assert!(!pat("git", &["*"]).covers(&pat("git", &["--output={path}"])));
        assert!(!pat("git", &["*"]).covers(&pat("git", &[ANY_ARG])));
        assert!(pat("git", &[ANY_ARG]).covers(&pat("git", &["--force"])));
        assert!(!pat("git", &["**"]).covers(&pat("git", &["a", "--b"])));
        assert!(!pat("git", &["**"]).covers(&pat("git", &[ANY_REST])));
        assert!(pat("git", &["**"]).covers(&pat("git", &["a", "**"])));
        assert!(pat("git", &[ANY_REST]).covers(&pat("git", &["-a", ANY_REST])));
        assert_eq!(
            CommandPattern::new("x".into(), args(&[ANY_REST, "a"])),
            Err(PatternError::MisplacedRest("x".into()))
        );
    }

    #[test]
    fn path_arguments_must_stay_inside_the_environment_directories() {
        let root = tempfile::tempdir().unwrap();
        let project = root.path().join("project");
        std::fs::create_dir_all(project.join("sub")).unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, project.join("escape")).unwrap();
        let scope = PathScope::new(project.clone(), std::slice::from_ref(&project));

        // Existing or to be created, relative to the cwd or absolute: inside.
        assert!(scope.contains("sub"));
        assert!(scope.contains(".codebolt/worktree/new"));
        assert!(scope.contains(&project.join("sub/x").display().to_string()));
        // `..`, a symlink out, an absolute path elsewhere, empty: outside.
        assert!(!scope.contains("../outside"));
        assert!(!scope.contains("sub/../../outside"));
        assert!(!scope.contains("escape/file"));
        assert!(!scope.contains(&outside.display().to_string()));
        assert!(!scope.contains("/etc/passwd"));
        assert!(!scope.contains(""));
        // A dangling link, out or in, and one in a loop: its target is not checked.
        std::os::unix::fs::symlink(outside.join("new"), project.join("dangling")).unwrap();
        std::os::unix::fs::symlink("not-yet", project.join("later")).unwrap();
        std::os::unix::fs::symlink("loop", project.join("loop")).unwrap();
        assert!(!scope.contains("dangling"));
        assert!(!scope.contains("dangling/deeper"));
        assert!(!scope.contains("later"));
        assert!(!scope.contains("loop/x"));
        // A link to a directory inside is followed.
        std::os::unix::fs::symlink("sub", project.join("alias")).unwrap();
        assert!(scope.contains("alias/new"));
        assert!(scope.contains("alias"));
    }

    #[test]
    fn path_arguments_never_go_through_proc() {
        // The host's working directory as a root: `/proc/self/cwd` names it while the
        // host checks, and the child's own working directory when the child opens it.
        let here = std::env::current_dir().unwrap();
        let scope = PathScope::new(here.clone(), std::slice::from_ref(&here));
        assert!(scope.contains("new-file"));
        assert!(!scope.contains("/proc/self/cwd/new-file"));
        assert!(!scope.contains("/dev/fd/0"));
        let root = tempfile::tempdir().unwrap();
        let ws = root.path().canonicalize().unwrap();
        let depth = ws.components().count();
        let up = "../".repeat(depth);
        std::os::unix::fs::symlink(format!("{up}proc/self/cwd"), ws.join("cwd")).unwrap();
        let scope = PathScope::new(ws.clone(), &[ws.clone(), here]);
        assert!(!scope.contains("cwd/escape"));

        let p = pat("git", &["worktree", "remove", "--force", PATH_ARG]);
        assert!(p.matches(
            "git",
            &args(&["worktree", "remove", "--force", "sub"]),
            &scope
        ));
        assert!(!p.matches(
            "git",
            &args(&["worktree", "remove", "--force", "/tmp"]),
            &scope
        ));
        let out = pat("git", &["diff", "--output={path}"]);
        assert!(out.matches("git", &args(&["diff", "--output=sub/x.patch"]), &scope));
        assert!(!out.matches("git", &args(&["diff", "--output=/etc/x"]), &scope));
        assert!(!out.matches("git", &args(&["diff", "sub/x.patch"]), &scope));
        // `*` covers `{path}`, not the other way round.
        assert!(pat("git", &["*"]).covers(&pat("git", &[PATH_ARG])));
        assert!(!pat("git", &[PATH_ARG]).covers(&pat("git", &["*"])));
    }
}
