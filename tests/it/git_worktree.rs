//! The built-in `git-worktree` provider against real git: one worktree per
//! environment on its own branch, the runtime inside it, diffs and a patch against
//! the base, the same worktree across a restart and a host `kill -9`, removal on
//! delete (running or stopped) with the branch kept, and clear refusals for a project
//! outside the grant or not a repository.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, git};

/// A repository with one commit on `main`.
fn project(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("README.md"), "hello\n").unwrap();
    std::fs::write(
        dir.join("old.txt"),
        "to be renamed\nwith enough lines\nto be similar\n",
    )
    .unwrap();
    std::fs::write(dir.join("doomed.txt"), "to be deleted\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "base"]);
}

/// The worktree paths git knows for the repository at `dir`.
fn worktrees(dir: &Path) -> Vec<String> {
    git(dir, &["worktree", "list", "--porcelain"])
        .lines()
        .filter_map(|l| l.strip_prefix("worktree "))
        .map(str::to_owned)
        .collect()
}

async fn create(server: &Server, name: &str, config: Value) -> String {
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(
                json!({"name": name, "provider": "git-worktree", "config": config, "start": true}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    env["id"].as_str().unwrap().to_owned()
}

async fn connected(server: &Server, id: &str) -> Value {
    server
        .wait_env(id, "running and connected", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await
}

#[tokio::test]
async fn a_worktree_environment_lives_through_restarts_and_goes_on_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().canonicalize().unwrap();
    // Under the data directory: covered by the provider's default grant.
    let repo = data.join("project");
    project(&repo);
    let server = Server::start(&data);

    let (_, provider) = server
        .call("GET", "/api/v1/providers/git-worktree", None)
        .await;
    assert_eq!(provider["source"]["kind"], "builtIn", "{provider}");
    assert_eq!(
        provider["denied"],
        json!({"commands": [], "urls": [], "directories": []}),
        "the default grant covers the request: {provider}"
    );

    let id = create(&server, "feature", json!({"projectPath": repo})).await;
    let env = connected(&server, &id).await;
    let wt = repo.join(".codebolt/worktree/feature");
    assert_eq!(env["resourceId"], wt.display().to_string());
    assert_eq!(env["metadata"]["branch"], "tether/feature");
    assert_eq!(env["metadata"]["reused"], "false");
    assert_eq!(
        worktrees(&repo),
        vec![repo.display().to_string(), wt.display().to_string()]
    );
    assert_eq!(
        git(&wt, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "tether/feature"
    );

    // The runtime works inside the worktree; the file handlers do too.
    let mut app = server.app(&id, "t").await;
    let (pwd, code) = app.exec("pwd", &["pwd"]).await;
    assert_eq!(
        (pwd.trim(), code),
        (wt.display().to_string().as_str(), json!(0))
    );
    let wrote = app
        .request(json!({"type": "providerWriteFile", "requestId": "w", "path": "notes/new.txt", "content": "written by an agent\n"}))
        .await;
    assert_eq!(wrote["message"]["success"], true, "{wrote}");
    assert_eq!(
        std::fs::read_to_string(wt.join("notes/new.txt")).unwrap(),
        "written by an agent\n"
    );
    std::fs::write(wt.join("README.md"), "hello\nchanged\n").unwrap();
    std::fs::rename(wt.join("old.txt"), wt.join("renamed.txt")).unwrap();
    std::fs::remove_file(wt.join("doomed.txt")).unwrap();

    let diff = app
        .request(json!({"type": "providerGetDiffFiles", "requestId": "d"}))
        .await;
    let mut files: Vec<(String, String)> = diff["message"]["files"]
        .as_array()
        .unwrap_or_else(|| panic!("no files: {diff}"))
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            ("README.md".into(), "modified".into()),
            ("doomed.txt".into(), "deleted".into()),
            ("notes/new.txt".into(), "added".into()),
            ("renamed.txt".into(), "renamed".into()),
        ],
        "{diff}"
    );
    let new_file = diff["message"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "notes/new.txt")
        .unwrap();
    assert!(
        new_file["diff"]
            .as_str()
            .unwrap()
            .contains("+written by an agent")
    );

    // One patch that applies to the base.
    let patch = app
        .request(json!({"type": "providerMergeAsPatch", "requestId": "p"}))
        .await;
    let patch = patch["message"]["patch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let patch_file = data.join("feature.patch");
    std::fs::write(&patch_file, &patch).unwrap();
    git(&repo, &["apply", "--check", patch_file.to_str().unwrap()]);
    drop(app);

    // Stop and start: the same worktree, the work still there. The stop is waited
    // for, so the running environment seen next is the new start's.
    server.stop_env(&id).await;
    let (status, _) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let env = connected(&server, &id).await;
    assert_eq!(env["metadata"]["reused"], "true");
    assert_eq!(env["resourceId"], wt.display().to_string());
    assert!(wt.join("notes/new.txt").exists());

    // A host crash: the restarted host reconnects to the same worktree.
    server.kill();
    let server = Server::start(&data);
    let env = connected(&server, &id).await;
    assert_eq!(env["metadata"]["reused"], "true");
    assert_eq!(worktrees(&repo).len(), 2, "still exactly one worktree");

    // Delete while stopped: a fresh instance removes the worktree; the branch stays.
    server.stop_env(&id).await;
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!wt.exists(), "the worktree directory is removed");
    assert_eq!(worktrees(&repo), vec![repo.display().to_string()]);
    git(
        &repo,
        &["rev-parse", "--verify", "refs/heads/tether/feature"],
    );

    // Delete while running removes it too.
    let id = create(&server, "second", json!({"projectPath": repo})).await;
    connected(&server, &id).await;
    assert_eq!(worktrees(&repo).len(), 2);
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(worktrees(&repo), vec![repo.display().to_string()]);
    server.stop();
}

#[tokio::test]
async fn projects_outside_the_grant_or_not_repositories_are_refused_clearly() {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let data = data_dir.path().canonicalize().unwrap();
    let elsewhere_dir = tempfile::tempdir().expect("tempdir");
    let elsewhere = elsewhere_dir.path().canonicalize().unwrap();
    project(&elsewhere);
    let plain = data.join("not-a-repo");
    std::fs::create_dir_all(&plain).unwrap();
    let server = Server::start(&data);

    let outside = create(&server, "outside", json!({"projectPath": elsewhere})).await;
    let env = server
        .wait_env(&outside, "error", |e| e["status"] == "error")
        .await;
    let reason = env["lastError"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not inside a directory granted to git-worktree"),
        "{reason}"
    );
    assert_eq!(worktrees(&elsewhere).len(), 1, "nothing was created there");

    let not_repo = create(&server, "plain", json!({"projectPath": plain})).await;
    let env = server
        .wait_env(&not_repo, "error", |e| e["status"] == "error")
        .await;
    let reason = env["lastError"].as_str().unwrap_or_default();
    assert!(reason.contains("is not a git repository"), "{reason}");

    let missing = create(&server, "missing", json!({})).await;
    let env = server
        .wait_env(&missing, "error", |e| e["status"] == "error")
        .await;
    let reason = env["lastError"].as_str().unwrap_or_default();
    assert!(
        reason.contains("config.projectPath is required"),
        "{reason}"
    );
    server.stop();
}
