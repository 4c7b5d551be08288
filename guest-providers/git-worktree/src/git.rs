//! The git commands this provider runs, each through the host's broker. The argument
//! shapes here are exactly the patterns the provider requests (see `requested`), so a
//! change to one must change the other — and the host's default grant.
//!
//! Every call starts with [`HARDENING`]: command-line `-c` settings, which win over
//! every configuration file, so that a repository whose `.git/config` or hooks were
//! written by someone else cannot make git run a command (fsmonitor, hooks, pager,
//! transports, submodules, auto-gc); `diff` adds `--no-ext-diff --no-textconv`.
//! The host's default grant requires these arguments literally. What `-c` cannot
//! switch off (filter drivers named in attributes) is described in SECURITY.md.

use tether_provider_sdk::process::Command;
use tether_provider_sdk::{CommandRequest, ProviderError};

/// The path-argument pattern: the host checks the argument names a path inside the
/// environment's directories.
const PATH: &str = "{path}";

/// The arguments every git call starts with (the host's `GIT_HARDENING`).
pub(crate) const HARDENING: [&str; 16] = [
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.pager=cat",
    "-c",
    "protocol.allow=never",
    "-c",
    "submodule.recurse=false",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "core.sshCommand=false",
];

/// The git shapes this provider runs, after [`HARDENING`].
const SHAPES: [&[&str]; 10] = [
    &["rev-parse", "--show-toplevel"],
    &["rev-parse", "--verify", "*"],
    &["rev-parse", "--abbrev-ref", "HEAD"],
    &["rev-parse", "--verify", "--quiet", "*"],
    &["worktree", "add", "-b", "*", PATH, "*"],
    &["worktree", "add", PATH, "*"],
    &["worktree", "remove", "--force", PATH],
    &["worktree", "prune"],
    &["add", "--all", "--intent-to-add"],
    &[
        "diff",
        "--no-ext-diff",
        "--no-textconv",
        "--binary",
        "--find-renames",
        "--output={path}",
        "*",
    ],
];

/// What the provider asks to spawn.
pub(crate) fn requested() -> Vec<CommandRequest> {
    let mut commands: Vec<CommandRequest> = SHAPES
        .iter()
        .map(|shape| CommandRequest::new("git", HARDENING.iter().chain(shape.iter()).copied()))
        .collect();
    commands.push(CommandRequest::new("tether", ["runtime"]));
    commands
}

/// Runs `git HARDENING args...` in `cwd` and returns its trimmed output.
fn git(cwd: &str, args: &[&str]) -> Result<String, ProviderError> {
    Command::new("git")
        .args(HARDENING.iter().chain(args.iter()).copied())
        .cwd(cwd)
        .run()
        .map(|out| out.trim().to_owned())
}

/// Refuses to run git in `worktree` unless its `.git` is the plain pointer file git
/// wrote, into `<project>/.git/worktrees/`: a `.git` directory or a pointer to
/// another git directory would bring configuration this provider never vetted.
pub(crate) fn check_pointer(worktree: &str, project: &str) -> Result<(), ProviderError> {
    let pointer = format!("{worktree}/.git");
    let refused = |why: String| {
        ProviderError::failed(format!(
            "{pointer} {why}; refusing to run git in {worktree}"
        ))
    };
    let meta = std::fs::symlink_metadata(&pointer)
        .map_err(|e| refused(format!("cannot be read ({e})")))?;
    if !meta.is_file() || meta.len() > 4096 {
        return Err(refused("is not a git worktree pointer file".into()));
    }
    let text =
        std::fs::read_to_string(&pointer).map_err(|e| refused(format!("cannot be read ({e})")))?;
    let target = text.trim_end_matches('\n').strip_prefix("gitdir: ");
    let inside = target
        .and_then(|t| t.strip_prefix(&format!("{project}/.git/worktrees/")))
        .is_some_and(|name| {
            !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\n'])
        });
    if inside {
        Ok(())
    } else {
        Err(refused(format!(
            "does not point into {project}/.git/worktrees/"
        )))
    }
}

/// The top of the work tree `dir` belongs to.
pub(crate) fn toplevel(dir: &str) -> Result<String, ProviderError> {
    git(dir, &["rev-parse", "--show-toplevel"])
}

/// The commit `rev` names in the repository at `dir`.
pub(crate) fn commit_of(dir: &str, rev: &str) -> Result<String, ProviderError> {
    git(
        dir,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
}

/// The branch checked out at `dir` (`HEAD` when detached).
pub(crate) fn current_branch(dir: &str) -> Result<String, ProviderError> {
    git(dir, &["rev-parse", "--abbrev-ref", "HEAD"])
}

/// Whether the local branch `branch` exists in the repository at `dir`.
pub(crate) fn branch_exists(dir: &str, branch: &str) -> bool {
    git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ],
    )
    .is_ok()
}

/// Forgets worktrees whose directories are gone (a stale one blocks `add`).
pub(crate) fn prune(project: &str) -> Result<(), ProviderError> {
    git(project, &["worktree", "prune"]).map(drop)
}

/// Adds the worktree `path` on `branch`, creating the branch at `base` if needed.
pub(crate) fn add_worktree(
    project: &str,
    path: &str,
    branch: &str,
    base: &str,
) -> Result<(), ProviderError> {
    if branch_exists(project, branch) {
        git(project, &["worktree", "add", path, branch]).map(drop)
    } else {
        git(project, &["worktree", "add", "-b", branch, path, base]).map(drop)
    }
}

/// Removes the worktree `path` (local changes included); its branch stays.
pub(crate) fn remove_worktree(project: &str, path: &str) -> Result<(), ProviderError> {
    git(project, &["worktree", "remove", "--force", path]).map(drop)
}

/// Writes the diff of the worktree at `dir` (untracked files included, as
/// intent-to-add) against `base` to `out`, a host path the host lets git write.
pub(crate) fn diff_to(dir: &str, base: &str, out: &str) -> Result<(), ProviderError> {
    git(dir, &["add", "--all", "--intent-to-add"])?;
    // `--output=FILE` in one argument: git misreads the two-argument form when a
    // revision follows it.
    let output = format!("--output={out}");
    git(
        dir,
        &[
            "diff",
            "--no-ext-diff",
            "--no-textconv",
            "--binary",
            "--find-renames",
            &output,
            base,
        ],
    )
    .map(drop)
}
