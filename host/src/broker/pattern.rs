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
    /// with symlinks resolved, must lie inside a root. A symlink that leads nowhere
    /// (or loops) is refused wherever it is on the way: the child would follow it,
    /// and create what it points to, wherever that is.
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
        let full = self.cwd.join(path);
        let mut probe = full.as_path();
        loop {
            if let Ok(real) = probe.canonicalize() {
                return self.roots.iter().any(|root| real.starts_with(root));
            }
            // Not resolvable, yet there: a dangling symlink (or one in a loop), whose
            // target the parent's check says nothing about.
            if probe.symlink_metadata().is_ok() {
                return false;
            }
            match probe.parent() {
                Some(parent) => probe = parent,
                None => return false,
            }
        }
    }
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
