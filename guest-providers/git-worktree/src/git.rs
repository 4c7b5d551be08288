//! The git commands this provider runs, each through the host's broker. The argument
//! shapes here are exactly the patterns the provider requests (see `requested`), so a
//! change to one must change the other — and the host's default grant.

use tether_provider_sdk::process::Command;
use tether_provider_sdk::{CommandRequest, ProviderError};

/// The path-argument pattern: the host checks the argument names a path inside the
/// environment's directories.
const PATH: &str = "{path}";

/// What the provider asks to spawn.
pub(crate) fn requested() -> Vec<CommandRequest> {
    vec![
        CommandRequest::new("git", ["rev-parse", "**"]),
        CommandRequest::new("git", ["worktree", "add", "-b", "*", PATH, "*"]),
        CommandRequest::new("git", ["worktree", "add", PATH, "*"]),
        CommandRequest::new("git", ["worktree", "remove", "--force", PATH]),
        CommandRequest::new("git", ["worktree", "prune"]),
        CommandRequest::new("git", ["add", "--all", "--intent-to-add"]),
        CommandRequest::new(
            "git",
            ["diff", "--binary", "--find-renames", "--output={path}", "*"],
        ),
        CommandRequest::new("tether", ["runtime"]),
    ]
}

/// Runs `git args...` in `cwd` and returns its trimmed output.
fn git(cwd: &str, args: &[&str]) -> Result<String, ProviderError> {
    Command::new("git")
        .args(args.iter().copied())
        .cwd(cwd)
        .run()
        .map(|out| out.trim().to_owned())
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
    git(dir, &["diff", "--binary", "--find-renames", &output, base]).map(drop)
}
