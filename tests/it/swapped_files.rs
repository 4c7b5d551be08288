//! Files the host appends to or writes in place in the data directory, swapped by
//! someone else who may write there (another process, a careless operator, a
//! sidecar) for a symbolic link to a file elsewhere, a named pipe, or a huge file: the
//! host never writes through the link, never waits on the pipe, reads no more of the
//! huge file than it needs, says what is wrong, and serves on (or, for a file it
//! cannot do without, refuses to start and says why).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, WAIT};

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
}

/// A named pipe at `path` held open by a reader that never reads, its buffer full:
/// the next write to it waits for good. Kept so while the answer lives.
fn full_pipe(path: &Path) -> std::fs::File {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    mkfifo(path);
    let mut pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("opening the pipe");
    while pipe.write(&[b'x'; 4096]).is_ok() {}
    pipe
}

fn swap_for_link(path: &Path, target: &Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(target, path).expect("symlink");
}

/// The text of `id`'s log, read through the API (within [`WAIT`]: a read that hangs
/// fails the test).
async fn tail(server: &Server, id: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/environments/{id}/logs?tail=10000",
            server.base
        ))
        .bearer_auth(TOKEN)
        .timeout(WAIT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("reading {id}'s log: {e}"));
    let status = response.status();
    (status, response.text().await.expect("log text"))
}

/// Waits until `id`'s log has a line whose message contains `text`.
pub(crate) async fn wait_message(server: &Server, id: &str, text: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, log) = tail(server, id).await;
        assert_eq!(status, StatusCode::OK, "{log}");
        if log.lines().any(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {id}'s log:\n{log}\nserver log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a stopped `local-process` environment and waits for its log file.
pub(crate) async fn created(server: &Server, name: &str) -> String {
    let body = json!({"name": name, "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    wait_message(server, &id, "environment created").await;
    id
}

pub(crate) async fn start(server: &Server, id: &str) {
    let (status, body) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// One environment's log swapped for a link to a file outside the data directory used
/// to be appended to through it, and one swapped for a named pipe nobody reads held the
/// one thread that writes every environment's log (and a tail of it, the request) once
/// the pipe was full: no environment's log was written again. Now neither is written, the server
/// log says why, the other logs go on and a tail of the pipe's answers.
#[tokio::test]
async fn a_log_swapped_for_a_link_or_a_pipe_is_neither_written_through_nor_waited_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("elsewhere");
    std::fs::write(&target, "keep\n").expect("write");
    let server = Server::start(dir.path());
    let linked = created(&server, "linked").await;
    let piped = created(&server, "piped").await;
    let plain = created(&server, "plain").await;
    let logs = dir.path().join(".codebolt/logs");
    swap_for_link(&logs.join(format!("{linked}.log")), &target);
    let _pipe = full_pipe(&logs.join(format!("{piped}.log")));

    start(&server, &linked).await;
    start(&server, &piped).await;
    server
        .wait_env(&piped, "running", |e| e["status"] == "running")
        .await;
    start(&server, &plain).await;
    wait_message(&server, &plain, "environment running").await;

    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
    let (status, text) = tail(&server, &piped).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let log = server.log();
    assert!(
        log.contains("it is a symbolic link, not a regular file"),
        "{log}"
    );
    let (status, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    let said = |what: &str| {
        (health["reasons"].as_array().into_iter().flatten()).any(|r| {
            r.as_str()
                .is_some_and(|r| r.starts_with("environment log: ") && r.contains(what))
        })
    };
    assert!(
        said("it is a symbolic link, not a regular file"),
        "{health}"
    );
    assert!(said("it is a named pipe, not a regular file"), "{health}");
    server.stop();
}

/// A rotated log (`<id>.log.1`) swapped for a link to a file elsewhere was read
/// through it: the environment's owner was shown whatever lines of that file parse
/// as JSON. Now the link is not followed.
#[tokio::test]
async fn a_rotated_log_that_is_a_link_is_not_read_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("elsewhere.jsonl");
    std::fs::write(
        &target,
        "{\"ts\":\"2026-01-01T00:00:00.000000Z\",\"message\":\"from elsewhere\"}\n",
    )
    .expect("write");
    let server = Server::start(dir.path());
    let id = created(&server, "rotated").await;
    let logs = dir.path().join(".codebolt/logs");
    swap_for_link(&logs.join(format!("{id}.log.1")), &target);
    let (status, text) = tail(&server, &id).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("environment created"), "{text}");
    assert!(!text.contains("from elsewhere"), "{text}");
    server.stop();
}

/// The directory of delete marks (`.codebolt/deleting`) swapped for a link to a
/// directory elsewhere: a delete cut and removed the file there named after the
/// environment, and the next start removed every file there (as marks of deletes a
/// crash interrupted). Now the link is not used: the delete goes on unmarked, the
/// start says why it finishes no deletes, and the files elsewhere are intact.
#[tokio::test]
async fn a_marks_directory_that_is_a_link_is_not_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    for name in ["victim", "other"] {
        std::fs::write(outside.path().join(name), "keep\n").expect("write");
    }
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("mkdir");
    swap_for_link(&codebolt.join("deleting"), outside.path());
    let server = Server::start(dir.path());
    let id = created(&server, "victim").await;
    let (status, body) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert!(status.is_success(), "{status}: {body}");
    server.stop();
    let server = Server::start(dir.path());
    let (status, _) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    for name in ["victim", "other"] {
        let kept = std::fs::read_to_string(outside.path().join(name));
        assert_eq!(kept.ok().as_deref(), Some("keep\n"), "{name}");
    }
    let log = server.log();
    assert!(
        log.contains("is a symbolic link, not the host's directory"),
        "{log}"
    );
    server.stop();
}

/// An environment's workspace (`.codebolt/environments/<name>`) swapped for a link to
/// a directory elsewhere was taken as the workspace: the provider and the runtime it
/// started worked there, and deleting the environment emptied that directory. Now
/// the start fails saying why, and the directory elsewhere is left as it was.
#[tokio::test]
async fn a_workspace_that_is_a_link_is_not_used_nor_emptied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let precious = outside.path().join("precious");
    std::fs::write(&precious, "keep\n").expect("write");
    let server = Server::start(dir.path());
    let id = created(&server, "linked").await;
    let workspaces = dir.path().join(".codebolt/environments");
    std::fs::create_dir_all(&workspaces).expect("mkdir");
    swap_for_link(&workspaces.join("linked"), outside.path());
    start(&server, &id).await;
    let env = server
        .wait_env(&id, "a failed start", |e| e["status"] == "error")
        .await;
    let why = env["lastError"].as_str().unwrap_or_default();
    assert!(
        why.contains("is a symbolic link, not the host's directory"),
        "{env}"
    );
    let response = reqwest::Client::new()
        .delete(format!("{}/api/v1/environments/{id}", server.base))
        .bearer_auth(TOKEN)
        .timeout(WAIT)
        .send()
        .await
        .expect("delete");
    assert!(response.status().is_success(), "{response:?}");
    assert_eq!(std::fs::read_to_string(&precious).expect("read"), "keep\n");
    server.stop();
}

/// The highest resident memory the process `pid` has had, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A log file grown far past what the host writes (here 400 MiB, sparse, ahead of a
/// last line) used to be read whole by a tail, into memory as large as the file. A
/// tail reads the end only: the last line is there, and the server's peak memory
/// does not grow by anything like the file's size.
#[tokio::test]
async fn a_huge_log_is_tailed_from_its_end_in_bounded_memory() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let id = created(&server, "huge").await;
    let path = dir.path().join(format!(".codebolt/logs/{id}.log"));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("the log");
    let len = file.metadata().expect("metadata").len();
    file.set_len(len + (400 << 20)).expect("set_len");
    file.write_all(b"\n{\"ts\":\"2026-01-01T00:00:00.000000Z\",\"message\":\"the last line\"}\n")
        .expect("write");
    drop(file);

    let before = peak_kib(server.pid());
    let (status, text) = tail(&server, &id).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("the last line"), "{text}");
    let grown = peak_kib(server.pid()).saturating_sub(before);
    assert!(
        grown < 64 << 10,
        "the server's peak memory grew by {grown} KiB reading a tail"
    );
    server.stop();
}

/// `tether serve` on `data_dir`, expected to refuse to start: what it printed. It
/// must end by itself within [`WAIT`] (a start that hangs fails the test).
pub(crate) fn refused_start(data_dir: &Path) -> String {
    let log = data_dir.join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("TETHER_API_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("tether serve");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tether serve did not refuse to start (it hangs, or serves):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{text}");
    text
}

/// The audit log swapped for a named pipe was taken for the log: entries went into the
/// pipe, and once it was full the audit writer, and every change waiting for its entry
/// to be durable, hung for good. Now the start is refused, naming the file and what
/// it is.
#[test]
fn an_audit_log_that_is_a_named_pipe_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("mkdir");
    mkfifo(&codebolt.join("audit.jsonl"));
    let text = refused_start(dir.path());
    assert!(
        text.contains("audit.jsonl") && text.contains("it is a named pipe"),
        "{text}"
    );
}

/// A rotated audit log (`audit.jsonl.1`) swapped for a named pipe or a link: a query
/// opened it (the pipe held the query, and the rotation lock with it, so the writer
/// and every change waiting on it hung once the log rotated; the link showed a file
/// from elsewhere as the log). Now the query answers 500 `audit_failed` at once, and
/// the server log names the file and what it is.
#[tokio::test]
async fn a_rotated_audit_log_that_is_a_pipe_or_a_link_is_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("elsewhere.jsonl");
    std::fs::write(&target, "{}\n").expect("write");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("mkdir");
    let server = Server::start(dir.path());
    for (file, make) in [("audit.jsonl.1", true), ("audit.jsonl.2", false)] {
        let path = codebolt.join(file);
        if make {
            mkfifo(&path);
        } else {
            let _ = std::fs::remove_file(codebolt.join("audit.jsonl.1"));
            swap_for_link(&path, &target);
        }
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/audit", server.base))
            .bearer_auth(TOKEN)
            .timeout(WAIT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("the audit query with {file}: {e}"));
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{file}"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "audit_failed", "{body}");
    }
    let log = server.log();
    assert!(
        log.contains("audit.jsonl.1: it is a named pipe, not a regular file"),
        "{log}"
    );
    assert!(
        log.contains("audit.jsonl.2: it is a symbolic link, not a regular file"),
        "{log}"
    );
    server.stop();
}

/// A directory left in the place of the oldest rotated audit log (`audit.jsonl.1`
/// with `keep_files = 1`): the rotation could not remove it, so once the log was full
/// every change was refused (500 `audit_failed`) for good. Now it is moved aside
/// (`audit.jsonl.1.rejected-<ns>`, logged) and the rotation goes on.
#[tokio::test]
async fn a_directory_in_the_place_of_a_rotated_audit_log_does_not_stop_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(codebolt.join("audit.jsonl.1")).expect("mkdir");
    std::fs::write(
        dir.path().join("tether.toml"),
        "[audit]\nmax_file_mib = 1\nkeep_files = 1\n",
    )
    .expect("tether.toml");
    // A log that is full: the next entry rotates it.
    std::fs::write(codebolt.join("audit.jsonl"), "{}\n".repeat(1 << 19)).expect("write");
    let server = Server::start(dir.path());
    let body = json!({"name": "after", "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let aside = std::fs::read_dir(&codebolt)
        .expect("read_dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("audit.jsonl.1.rejected-")
        });
    assert!(aside, "the directory was not moved aside");
    assert!(std::fs::metadata(codebolt.join("audit.jsonl.1")).is_ok_and(|m| m.is_file()));
    server.stop();
}

/// The data directory's lock file swapped for a link to a file elsewhere: the host
/// used to cut that file and write its pid into it. Now the start is refused, and the
/// file elsewhere is as it was.
#[test]
fn a_lock_file_that_is_a_link_is_refused_not_written_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("elsewhere");
    std::fs::write(&target, "keep\n").expect("write");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("mkdir");
    swap_for_link(&codebolt.join("tether.lock"), &target);
    let text = refused_start(dir.path());
    assert!(
        text.contains("tether.lock") && text.contains("it is a symbolic link"),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
}

/// A delete marks the environment's name in `.codebolt/deleting/`; a link left under
/// that name used to be followed, and the file it named cut to nothing, and a named
/// pipe there held the delete (and the thread serving it) until a reader came. Now
/// the mark is not made (the delete goes on, as when marking fails), the file is
/// intact and the delete answers.
#[tokio::test]
async fn a_delete_mark_that_is_a_link_or_a_pipe_is_not_written_through_nor_waited_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("elsewhere");
    std::fs::write(&target, "keep\n").expect("write");
    let server = Server::start(dir.path());
    let linked = created(&server, "linked").await;
    let piped = created(&server, "piped").await;
    let marks = dir.path().join(".codebolt/deleting");
    std::fs::create_dir_all(&marks).expect("mkdir");
    swap_for_link(&marks.join("linked"), &target);
    mkfifo(&marks.join("piped"));
    for id in [linked, piped] {
        let response = reqwest::Client::new()
            .delete(format!("{}/api/v1/environments/{id}", server.base))
            .bearer_auth(TOKEN)
            .timeout(WAIT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("deleting {id}: {e}"));
        assert!(response.status().is_success(), "{response:?}");
    }
    assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep\n");
    server.stop();
}
