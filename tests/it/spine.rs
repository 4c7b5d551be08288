//! The whole path once: a `local-process` environment from create to delete, with a
//! real runtime connecting back, apps on two threads, provider file handlers, a stop,
//! a host restart and a delete.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, wait_gone};

#[tokio::test]
async fn local_process_environment_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());

    // Create and start; it reaches running with its runtime connected.
    let env = server
        .running_env("spine", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();
    let workspace = dir.path().join(".codebolt/environments/spine");
    assert!(workspace.is_dir(), "workspace created");
    assert_eq!(
        env["resourceId"],
        json!(workspace.canonicalize().unwrap().display().to_string())
    );
    let runtime_pid: u32 = env["metadata"]["pid"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("runtime pid in metadata");

    // Two apps on two threads: each gets its own echo back, and only its own.
    let mut t1 = server.app(&id, "t1").await;
    let mut t2 = server.app(&id, "t2").await;
    let first = t1.next_any().await;
    assert_eq!(first["type"], "environmentStatus");
    assert_eq!(first["status"], "running");
    t1.send(json!({"type": "echo", "requestId": "e1", "payload": {"from": "t1"}}))
        .await;
    let echo = t1.next().await;
    assert_eq!(echo["type"], "echoResponse");
    assert_eq!(echo["requestId"], "e1");
    assert_eq!(echo["threadId"], "t1");
    assert_eq!(echo["payload"], json!({"from": "t1"}));
    // The runtime answers in order, so if t1's echo had reached t2 it would come
    // before t2's own.
    t2.send(json!({"type": "echo", "requestId": "e2", "payload": 2}))
        .await;
    let echo2 = t2.next().await;
    assert_eq!(
        (echo2["requestId"].clone(), echo2["threadId"].clone()),
        (json!("e2"), json!("t2"))
    );

    // The runtime runs commands in its workspace and streams their output.
    let (output, code) = t1.exec("x1", &["pwd"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        output.trim(),
        workspace.canonicalize().unwrap().display().to_string()
    );

    // Provider file handlers: write, read back, with the request id echoed.
    let wrote = t1
        .request(json!({"type": "providerWriteFile", "requestId": "w1", "path": "notes/hello.txt", "content": "hello, tether"}))
        .await;
    assert_eq!(wrote["type"], "remoteProviderEvent");
    assert_eq!(wrote["action"], "providerWriteFileResponse");
    assert_eq!(wrote["message"]["success"], true, "{wrote}");
    assert_eq!(
        std::fs::read_to_string(workspace.join("notes/hello.txt")).unwrap(),
        "hello, tether"
    );
    let read = t1
        .request(json!({"type": "providerReadFile", "requestId": "r1", "path": "notes/hello.txt"}))
        .await;
    assert_eq!(read["action"], "providerReadFileResponse");
    assert_eq!(read["message"]["content"], "hello, tether");

    // Escapes are refused with an error, not a file.
    for (rid, path) in [
        ("r2", "../../etc/passwd"),
        ("r3", "/etc/passwd"),
        ("r4", "notes/../../x"),
    ] {
        let refused = t1
            .request(json!({"type": "providerReadFile", "requestId": rid, "path": path}))
            .await;
        assert_eq!(refused["action"], "providerReadFileResponse");
        assert!(refused.get("message").is_none(), "{refused}");
        assert_eq!(refused["error"]["code"], "invalid_input", "{refused}");
    }
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("app request refused") && l.contains(&id)),
        "the refusals are logged with the environment id"
    );

    // Stop: the runtime process is gone and the file says stopped.
    server.stop_env(&id).await;
    wait_gone(runtime_pid).await;
    let record = find(&server.records(), &id).expect("record kept");
    assert_eq!(record["desiredState"], "stopped");

    // A host restart on the same directory finds the record.
    server.stop();
    let server = Server::start(dir.path());
    let (status, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(status, StatusCode::OK);
    let listed = list
        .as_array()
        .and_then(|l| l.iter().find(|e| e["id"] == json!(id)))
        .expect("record after restart");
    assert_eq!(listed["name"], "spine");
    assert_eq!(listed["desiredState"], "stopped");

    // Delete: gone from the API, the file, and the disk.
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(find(&server.records(), &id).is_none());
    assert!(!workspace.exists());
    let (status, body) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    server.stop();
}

#[tokio::test]
async fn deleting_a_running_environment_stops_its_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("short-lived", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let pid: u32 = env["metadata"]["pid"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("pid");
    let mut app = server.app(id, "main").await;
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    wait_gone(pid).await;
    // The app is told the environment is gone by a close frame.
    loop {
        match tokio::time::timeout(crate::support::WAIT, app.try_next()).await {
            Ok(None) => break,
            Ok(Some(_)) => continue,
            Err(_) => panic!("app connection not closed"),
        }
    }
    server.stop();
}

/// The host's SIGTERM handler is in place before it says it listens: a supervisor that
/// stops it at once gets the orderly shutdown (exit 0), not the signal's default death.
/// (It used to be registered by a task spawned after that line, and a quick SIGTERM
/// killed the host outright.)
#[test]
fn a_sigterm_right_after_the_host_says_it_listens_shuts_it_down_in_order() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        Server::start(dir.path()).stop();
    }
}

#[tokio::test]
async fn host_shutdown_leaves_no_runtime_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("left-running", "local-process", json!({}))
        .await;
    let pid: u32 = env["metadata"]["pid"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .expect("pid");
    server.stop();
    wait_gone(pid).await;
}

fn find(records: &Value, id: &str) -> Option<Value> {
    records["environments"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == json!(id))
        .cloned()
}
