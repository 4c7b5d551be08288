//! Per-environment logs: what the provider logs, what its processes print (the
//! runtime's own output among it) and the host's lifecycle events for the environment,
//! read with a tail and followed live, under the same rules as the environment, and
//! gone with it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, WAIT};

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn get_logs(server: &Server, id: &str, query: &str, token: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/environments/{id}/logs{query}",
            server.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("logs");
    let path = format!("/api/v1/environments/{id}/logs{query}");
    crate::support::checked("GET", &path, response).await
}

/// Waits until the log of `id` has a line `pred` accepts; all its lines.
async fn wait_line(
    server: &Server,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = get_logs(server, id, "?tail=10000", TOKEN).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let all = lines(&text);
        if all.iter().any(&pred) {
            return all;
        }
        assert!(Instant::now() < deadline, "no {what} in the log:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_environment_s_log_has_its_provider_its_runtime_and_its_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("logged", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();

    let all = wait_line(&server, &id, "runtime output", |l| {
        l["source"] == "process"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("runtime connected to host"))
    })
    .await;
    let has = |source: &str, text: &str| {
        all.iter().any(|l| {
            l["source"] == source && l["message"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    assert!(has("provider", "runtime tether started"), "{all:?}");
    assert!(has("host", "environment running"), "{all:?}");
    for line in &all {
        assert!(
            line["ts"].is_string() && line["level"].is_string(),
            "{line}"
        );
    }
    let process = all
        .iter()
        .find(|l| l["source"] == "process")
        .expect("process line");
    assert_eq!(process["stream"], "stderr", "{process}");
    assert!(process["pid"].is_u64(), "{process}");

    // A tail and a since.
    let (_, one) = get_logs(&server, &id, "?tail=1", TOKEN).await;
    assert_eq!(lines(&one).len(), 1);
    let (_, none) = get_logs(&server, &id, "?since=2999-01-01T00:00:00Z", TOKEN).await;
    assert!(none.is_empty(), "{none}");
    for bad in [
        "?tail=x",
        "?tail=10001",
        "?since=yesterday",
        "?follow=maybe",
    ] {
        let (status, body) = get_logs(&server, &id, bad, TOKEN).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    // Followed live: a restart's lines arrive on the open response.
    let mut follow = server.follow_logs(&id, TOKEN).await;
    assert_eq!(follow.headers()["content-type"], "application/x-ndjson");
    let (status, _) = server
        .call("POST", &format!("/api/v1/environments/{id}/restart"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while !seen.contains("environment running") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, follow.chunk())
            .await
            .expect("a followed line in time")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(
            &chunk.expect("the follow ended early"),
        ));
    }
    lines(&seen);

    // Someone else's is 404, a token without envs:read is 403.
    let bob = server.user_token("bob").await.0;
    assert_eq!(
        get_logs(&server, &id, "", &bob).await.0,
        StatusCode::NOT_FOUND
    );
    let (relay_only, _) = server
        .user_token_with("admin", json!({"scopes": ["relay"]}))
        .await;
    assert_eq!(
        get_logs(&server, &id, "", &relay_only).await.0,
        StatusCode::FORBIDDEN
    );

    // Deleted with the environment; a follower's response ends.
    let file = dir.path().join(format!(".codebolt/logs/{id}.log"));
    assert!(file.is_file());
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let ended = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = follow.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the follow did not end with the environment");
    assert!(!file.exists(), "the log outlived its environment");
    assert_eq!(
        get_logs(&server, &id, "", TOKEN).await.0,
        StatusCode::NOT_FOUND
    );
    server.stop();
}

#[tokio::test]
async fn a_followed_log_does_not_hold_the_host_s_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "quiet", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id");
    let mut follow = server.follow_logs(id, TOKEN).await;
    // `stop` fails the test if SIGTERM does not end the host in time.
    let stopping = std::thread::spawn(move || server.stop());
    let mut seen = String::new();
    let read = async {
        while let Ok(Some(chunk)) = follow.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the follow outlived the host");
    assert!(seen.contains("the host is shutting down"), "{seen}");
    stopping.join().expect("the host stopped");
}

/// An environment's log holds what its runtime prints and its provider logs (secrets
/// among them, at times), and the API shows it to its owner only: the file is its
/// owner's only too, like the records and the audit log (it used to be 0644).
#[tokio::test]
async fn an_environment_s_log_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let body = json!({"name": "private", "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id");
    wait_line(&server, id, "the creation", |l| {
        l["message"] == "environment created"
    })
    .await;
    let path = dir.path().join(format!(".codebolt/logs/{id}.log"));
    let mode = std::fs::metadata(&path)
        .expect("the log file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}: {mode:o}", path.display());
    server.stop();
}

/// A log whose last line a crash cut short (here mid-character): the host's next line
/// used to follow it on the same line, and the tail stopped reading at the first line
/// that was not UTF-8, so nothing written after the crash was ever shown. The torn
/// line is ended (and left out of the tail), and what follows reads as usual.
#[tokio::test]
async fn a_line_torn_by_a_crash_hides_nothing_written_after_it() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let body = json!({"name": "torn", "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    wait_line(&server, &id, "the creation", |l| {
        l["message"] == "environment created"
    })
    .await;
    server.kill();

    let path = dir.path().join(format!(".codebolt/logs/{id}.log"));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("the log");
    file.write_all(b"{\"ts\":\"2026-01-01T00:00:00.000000Z\",\"message\":\"half \xc3")
        .expect("a torn line");
    drop(file);

    let server = Server::start(dir.path());
    let (status, body) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let all = wait_line(&server, &id, "a line after the crash", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("starting on provider"))
    })
    .await;
    assert!(
        all.iter().any(|l| l["message"] == "environment created"),
        "{all:?}"
    );
    let (_, text) = get_logs(&server, &id, "?tail=10000", TOKEN).await;
    for line in text.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line:?}"
        );
    }
    server.stop();
}
