//! The host's directories in the data directory (`.codebolt/`, the workspaces'
//! `environments/`, `logs/`, ...) swapped for a symbolic link to a directory elsewhere
//! by someone who may write the data directory (a runtime of the same user, a
//! sidecar), and the host's files swapped for a hard link to a file elsewhere: the
//! host writes and removes nothing through them, says why, and (for a directory at
//! start, a file it cannot do without) refuses to start.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Server, WAIT};
use crate::swapped_files::{created, refused_start, start, wait_message};

/// `dir` moved aside and a link to `target` put in its place.
fn swap_dir_for_link(dir: &Path, target: &Path) {
    if dir.exists() {
        let mut aside = dir.as_os_str().to_owned();
        aside.push(".aside");
        std::fs::rename(dir, aside).expect("moving the directory aside");
    }
    std::os::unix::fs::symlink(target, dir).expect("symlink");
}

/// The names in `dir`.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// Waits until `/healthz` gives a reason containing `text`; the reasons then.
async fn wait_reason(server: &Server, text: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, health) = server.call("GET", "/healthz", None).await;
        assert_eq!(status, StatusCode::OK, "{health}");
        let said = (health["reasons"].as_array().into_iter().flatten())
            .any(|r| r.as_str().is_some_and(|r| r.contains(text)));
        if said {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "no reason {text:?} in {health}\nserver log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workspaces' directory (`.codebolt/environments`) swapped for a link while the
/// host runs: deleting an environment removed the directory of its name in the
/// link's target, outside the data directory. Now the workspace is not removed (the
/// log says why), a start makes no workspace there, and the files there are intact.
#[tokio::test]
async fn a_workspaces_directory_swapped_for_a_link_has_nothing_removed_or_made_through_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(outside.path().join("victim")).expect("mkdir");
    std::fs::write(outside.path().join("victim/precious"), "keep\n").expect("write");
    let server = Server::start(dir.path());
    let victim = created(&server, "victim").await;
    let other = created(&server, "other").await;
    swap_dir_for_link(&dir.path().join(".codebolt/environments"), outside.path());

    let (status, body) = server
        .call("DELETE", &format!("/api/v1/environments/{victim}"), None)
        .await;
    assert!(status.is_success(), "{status}: {body}");
    start(&server, &other).await;
    let env = server
        .wait_env(&other, "a failed start", |e| e["status"] == "error")
        .await;
    let why = env["lastError"].as_str().unwrap_or_default();
    assert!(
        why.contains("is a symbolic link, not the host's directory"),
        "{env}"
    );
    let kept = std::fs::read_to_string(outside.path().join("victim/precious"));
    assert_eq!(kept.ok().as_deref(), Some("keep\n"));
    assert_eq!(names_in(outside.path()), ["victim"]);
    let log = server.log();
    assert!(
        log.contains("not removing the workspace")
            && log.contains("is a symbolic link, not the host's directory"),
        "{log}"
    );
    server.stop();
}

/// The logs' directory (`.codebolt/logs`) swapped for a link while the host runs:
/// every environment's log was then written in the link's target. Now no line is
/// written there, and `/healthz` says why.
#[tokio::test]
async fn a_logs_directory_swapped_for_a_link_is_not_written_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let id = created(&server, "logged").await;
    swap_dir_for_link(&dir.path().join(".codebolt/logs"), outside.path());
    start(&server, &id).await;
    server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    let health = wait_reason(&server, "is a symbolic link, not the host's directory").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        names_in(outside.path()).is_empty(),
        "{:?}",
        names_in(outside.path())
    );
    server.stop();
}

/// A link in place of `.codebolt` itself, or of a directory under it, when the host
/// starts: everything it keeps went through it (the lock, the records, the logs, the
/// workspaces). Now the start is refused, naming the link, and nothing is made there.
#[test]
fn a_host_directory_that_is_a_link_stops_the_start() {
    for linked in [".codebolt", ".codebolt/environments", ".codebolt/logs"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(linked);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        swap_dir_for_link(&path, outside.path());
        let text = refused_start(dir.path());
        assert!(
            text.contains(&format!(
                "{} is a symbolic link, not the host's directory",
                path.display()
            )),
            "{linked}: {text}"
        );
        assert!(names_in(outside.path()).is_empty(), "{linked}");
    }
}

/// A hard link in place of a file the host appends to (the audit log at start, an
/// environment's log while it runs) is a second name of a file elsewhere: the host
/// appended to that file. Now the start is refused (the audit log), the environment's
/// lines are dropped with a `/healthz` reason (its log), and the file is intact.
#[tokio::test]
async fn a_host_file_that_is_a_hard_link_is_not_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Beside the data directory: a hard link needs the same filesystem.
    let outside = tempfile::tempdir_in(dir.path().parent().expect("parent")).expect("tempdir");
    let target = outside.path().join("elsewhere");
    std::fs::write(&target, "keep\n").expect("write");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("mkdir");
    std::fs::hard_link(&target, codebolt.join("audit.jsonl")).expect("hard link");
    let text = refused_start(dir.path());
    assert!(
        text.contains("audit.jsonl") && text.contains("it is a hard link"),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
    std::fs::remove_file(codebolt.join("audit.jsonl")).expect("rm");

    let server = Server::start(dir.path());
    let id = created(&server, "linked").await;
    let log = codebolt.join(format!("logs/{id}.log"));
    std::fs::remove_file(&log).expect("rm");
    std::fs::hard_link(&target, &log).expect("hard link");
    start(&server, &id).await;
    let health = wait_reason(&server, "it is a hard link").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
    // The other environments' logs go on.
    let plain = created(&server, "plain").await;
    wait_message(&server, &plain, "environment created").await;
    server.stop();
}

/// A thread swapping the workspaces' directory for a link to a directory elsewhere and
/// back, as fast as it can, while environments are deleted: the host checked the path,
/// then removed the workspace by path, and a swap in between had it remove the
/// directory of the same name elsewhere (`rm -rf` outside the data directory). Now it
/// removes through the directory it opened, reached through no link: every directory
/// elsewhere is intact.
#[tokio::test]
async fn deletes_raced_by_a_swapping_thread_remove_nothing_elsewhere() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const ROUNDS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    let environments = codebolt.join("environments");
    std::fs::create_dir_all(&environments).expect("mkdir");
    let server = Server::start(dir.path());
    let mut ids = Vec::new();
    for i in 0..ROUNDS {
        let name = format!("victim-{i}");
        std::fs::create_dir(outside.path().join(&name)).expect("mkdir");
        std::fs::write(outside.path().join(&name).join("precious"), "keep\n").expect("write");
        let body = serde_json::json!({"name": name, "provider": "local-process"});
        let (status, env) = server
            .call("POST", "/api/v1/environments", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{env}");
        ids.push(env["id"].as_str().expect("id").to_owned());
    }
    let (real, link) = (codebolt.join("real"), codebolt.join("link"));
    std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");
    let stop = Arc::new(AtomicBool::new(false));
    // Renames only: `environments` is always the real directory or the link.
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
    for id in &ids {
        let (status, body) = server
            .call("DELETE", &format!("/api/v1/environments/{id}"), None)
            .await;
        assert!(status.is_success(), "{status}: {body}");
    }
    // Each delete's workspace removal runs after its answer: wait for the last.
    let deadline = Instant::now() + WAIT;
    while server.log().matches("environment deleted").count() < ROUNDS && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    let lost: Vec<String> = (0..ROUNDS)
        .map(|i| format!("victim-{i}"))
        .filter(|name| !outside.path().join(name).join("precious").exists())
        .collect();
    assert!(lost.is_empty(), "removed elsewhere: {lost:?}");
    server.stop();
}
