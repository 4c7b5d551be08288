//! Issue 10, git immune to the repository's own configuration: a project whose
//! `.git/config` runs a command as `core.fsmonitor`, `diff.external` and
//! `core.pager`, and whose hooks do the same, goes through the built-in
//! `git-worktree` provider's start, diff and patch without any of them running;
//! apps cannot write git metadata through the file handlers, and a replaced `.git`
//! pointer makes the provider refuse to run git at all.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{Server, git};

/// A repository with one commit whose configuration and hooks append to `marker`
/// whenever git runs one of them.
fn armed_project(repo: &Path, marker: &Path) {
    std::fs::create_dir_all(repo).unwrap();
    git(repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "hello\n").unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", "base"]);
    let evil = repo.join(".git/evil.sh");
    std::fs::write(
        &evil,
        format!("#!/bin/sh\necho \"$0 $*\" >> {}\n", marker.display()),
    )
    .unwrap();
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&evil, executable.clone()).unwrap();
    let evil = evil.display().to_string();
    for key in ["core.fsmonitor", "diff.external", "core.pager"] {
        git(repo, &["config", key, &evil]);
    }
    for hook in [
        "post-checkout",
        "reference-transaction",
        "post-index-change",
        "pre-auto-gc",
    ] {
        let path = repo.join(".git/hooks").join(hook);
        std::fs::copy(&evil, &path).unwrap();
        std::fs::set_permissions(&path, executable.clone()).unwrap();
    }
}

fn refused(reply: &Value) -> bool {
    reply.get("error").is_some() || reply["message"]["success"] == false
}

#[tokio::test]
async fn hostile_repository_config_and_hooks_never_run_under_git_worktree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().canonicalize().unwrap();
    let repo = data.join("project");
    let marker = data.join("pwned");
    armed_project(&repo, &marker);
    // The trap is real: plain git in this repository runs the fsmonitor command.
    git(&repo, &["status", "--short"]);
    assert!(
        marker.exists(),
        "the armed repository did not run its command"
    );
    std::fs::remove_file(&marker).unwrap();

    let server = Server::start(&data);
    let (_, provider) = server
        .call("GET", "/api/v1/providers/git-worktree", None)
        .await;
    assert_eq!(
        provider["granted"]["setEnv"],
        json!([
            "TETHER_RUNTIME_URL",
            "TETHER_RUNTIME_TOKEN",
            "TETHER_ENVIRONMENT_ID"
        ]),
        "{provider}"
    );
    assert_eq!(
        provider["granted"]["commands"][0]["args"][1],
        "core.fsmonitor=false"
    );
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "armed", "provider": "git-worktree",
                        "config": {"projectPath": repo}, "start": true})),
        )
        .await;
    assert!(status.is_success(), "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    server
        .wait_env(&id, "running and connected", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
    let wt = repo.join(".codebolt/worktree/armed");
    let mut app = server.app(&id, "t").await;

    // Apps cannot touch git metadata through the file handlers.
    for path in [".git", ".git/config", "sub/.git/hooks/post-checkout"] {
        let reply = app
            .request(
                json!({"type": "providerWriteFile", "requestId": path, "path": path,
                            "content": "[core]\n\tfsmonitor = /bin/false\n"}),
            )
            .await;
        assert!(refused(&reply), "{path}: {reply}");
        assert!(reply.to_string().contains("git metadata"), "{reply}");
    }
    assert!(std::fs::metadata(wt.join(".git")).unwrap().is_file());

    let wrote = app
        .request(json!({"type": "providerWriteFile", "requestId": "w", "path": "notes.txt", "content": "new\n"}))
        .await;
    assert_eq!(wrote["message"]["success"], true, "{wrote}");
    std::fs::write(wt.join("README.md"), "hello\nchanged\n").unwrap();
    let diff = app
        .request(json!({"type": "providerGetDiffFiles", "requestId": "d"}))
        .await;
    let files = diff["message"]["files"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(files.len(), 2, "{diff}");
    let patch = app
        .request(json!({"type": "providerMergeAsPatch", "requestId": "p"}))
        .await;
    assert!(
        patch["message"]["patch"]
            .as_str()
            .is_some_and(|p| p.contains("+changed")),
        "{patch}"
    );
    assert!(
        !marker.exists(),
        "repository configuration ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );

    // A `.git` pointer to a git directory of someone else's making: git is not run.
    let foreign = data.join("foreign-gitdir");
    std::fs::write(wt.join(".git"), format!("gitdir: {}\n", foreign.display())).unwrap();
    let diff = app
        .request(json!({"type": "providerGetDiffFiles", "requestId": "d2"}))
        .await;
    assert!(refused(&diff), "{diff}");
    assert!(diff.to_string().contains("refusing to run git"), "{diff}");
    assert!(!marker.exists());
    drop(app);
    server.stop();
}
