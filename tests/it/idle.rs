//! Issue 13, items 3 and 5: idle stops and deadlines. An environment with
//! `idleStopSecs` stops once nobody uses it (`stopReason: idle`, audited as `system`)
//! unless its runtime says `runtimeBusy`; a new start clears the reason; a start that
//! hangs ends in `error` within its timeout; an admin can force-delete an environment
//! stuck in a transition, a user cannot.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, WAIT, Ws, guests};

fn audit_lines(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(".codebolt/audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn env_of(server: &Server, id: &str) -> Value {
    let (status, env) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{env}");
    env
}

/// Asserts `id` stays running (nothing scheduled to stop it) for `how_long`.
async fn stays_running(server: &Server, id: &str, how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        let env = env_of(server, id).await;
        assert_eq!(env["status"], "running", "{env}");
        assert_eq!(env["stopsAt"], Value::Null, "{env}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_idle_environment_stops_after_its_last_app_leaves_and_a_start_clears_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "sleepy", "provider": "local-process", "start": true, "idleStopSecs": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert_eq!(env["idleStopSecs"], 2, "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    server
        .wait_env(&id, "running and connected", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;

    // An app attached holds it awake, however long it is quiet.
    let mut app = server.app(&id, "t").await;
    let reply = app
        .request(json!({"type": "echo", "requestId": "e1", "payload": 1}))
        .await;
    assert_eq!(reply["type"], "echoResponse", "{reply}");
    stays_running(&server, &id, Duration::from_secs(3)).await;
    let before = env_of(&server, &id).await;
    assert!(before["lastActivityAt"].is_string(), "{before}");

    // The last app leaves: the countdown shows, then the host stops it.
    drop(app);
    let counting = server
        .wait_env(&id, "a stopsAt", |e| e["stopsAt"].is_string())
        .await;
    assert_eq!(counting["desiredState"], "running", "{counting}");
    let left = Instant::now();
    let stopped = server
        .wait_env(&id, "stopped for idleness", |e| e["status"] == "stopped")
        .await;
    assert!(
        left.elapsed() < Duration::from_secs(6),
        "{:?}",
        left.elapsed()
    );
    assert_eq!(stopped["desiredState"], "stopped", "{stopped}");
    assert_eq!(stopped["stopReason"], "idle", "{stopped}");
    assert_eq!(stopped["stopsAt"], Value::Null, "{stopped}");
    let records = server.records();
    let record = records["environments"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("no record {id}: {records}"));
    assert_eq!(record["stopReason"], "idle", "{records}");
    assert_eq!(record["idleStopSecs"], 2, "{records}");

    // Audited as the host's own action.
    let deadline = Instant::now() + WAIT;
    let entry = loop {
        let found = audit_lines(dir.path())
            .into_iter()
            .find(|e| e["action"] == "environment.idle_stop" && e["target"] == id.as_str());
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no environment.idle_stop audit line"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry["actor"], "system", "{entry}");
    assert_eq!(entry["outcome"], "ok", "{entry}");

    // A new start clears the reason; a stop by a caller records `user`.
    let (status, _) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let started = server
        .wait_env(&id, "running again", |e| e["status"] == "running")
        .await;
    assert_eq!(started["stopReason"], Value::Null, "{started}");
    let stopped = server.stop_env(&id).await;
    assert_eq!(stopped["stopReason"], "user", "{stopped}");
}

#[tokio::test]
async fn idle_stop_secs_is_validated_and_patchable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    for bad in [json!(-1), json!("2"), json!(2_592_001u64)] {
        let (status, body) = server
            .call(
                "POST",
                "/api/v1/environments",
                Some(json!({"name": "bad", "provider": "local-process", "idleStopSecs": bad})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body.to_string().contains("idleStopSecs"), "{body}");
    }
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "p", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    assert_eq!(env["idleStopSecs"], Value::Null, "{env}");
    let id = env["id"].as_str().unwrap();
    let path = format!("/api/v1/environments/{id}");
    let (status, env) = server
        .call("PATCH", &path, Some(json!({"idleStopSecs": 600})))
        .await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(env["idleStopSecs"], 600, "{env}");
    let (status, env) = server
        .call("PATCH", &path, Some(json!({"idleStopSecs": 0})))
        .await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(env["idleStopSecs"], Value::Null, "{env}");
}

#[tokio::test]
async fn a_busy_runtime_holds_its_environment_awake_without_apps() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_handoff(dir.path(), "");
    let (id, url, token) = server.handoff_env("busy").await;
    let mut runtime = Ws::connect(&url, Some(&token)).await.expect("runtime");
    runtime
        .send(json!({"type": "runtimeBusy", "busy": true}))
        .await;
    let (status, env) = server
        .call(
            "PATCH",
            &format!("/api/v1/environments/{id}"),
            Some(json!({"idleStopSecs": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{env}");
    // An app that comes and goes does not see the relay's bookkeeping frame.
    let mut app = server.app(&id, "t").await;
    runtime
        .send(json!({"type": "runtimeBusy", "busy": true}))
        .await;
    runtime
        .send(json!({"type": "hello", "threadId": "t"}))
        .await;
    let first = app.next().await;
    assert_eq!(first["type"], "hello", "{first}");
    drop(app);

    stays_running(&server, &id, Duration::from_secs(4)).await;

    // Done working: now it is idle like any other.
    runtime
        .send(json!({"type": "runtimeBusy", "busy": false}))
        .await;
    let stopped = server
        .wait_env(&id, "stopped for idleness", |e| e["status"] == "stopped")
        .await;
    assert_eq!(stopped["stopReason"], "idle", "{stopped}");
}

/// A server with the `hostile` provider dropped in and `lifecycle` settings `toml`.
fn hostile_server(dir: &Path, toml: &str) -> Server {
    let providers = dir.join(".codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::copy(guests::HOSTILE, providers.join("hostile.wasm")).unwrap();
    std::fs::write(dir.join("tether.toml"), toml).unwrap();
    Server::start(dir)
}

async fn spinner(server: &Server, name: &str) -> String {
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({
                "name": name, "provider": "hostile", "config": {"attack": "spin"},
                "start": true, "restartPolicy": "never",
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    env["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_hung_start_ends_in_error_within_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = hostile_server(dir.path(), "[lifecycle]\nstart_timeout_secs = 2\n");
    let asked = Instant::now();
    let id = spinner(&server, "hangs").await;
    let failed = server
        .wait_env(&id, "error", |e| e["status"] == "error")
        .await;
    // The timeout, plus the grace for tearing down, plus polling.
    assert!(
        asked.elapsed() < Duration::from_secs(6),
        "{:?}",
        asked.elapsed()
    );
    let reason = failed["lastError"].as_str().unwrap_or_default();
    assert!(reason.contains("timed out after 2s"), "{failed}");
}

#[tokio::test]
async fn an_admin_force_deletes_a_stuck_environment_and_a_user_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = hostile_server(dir.path(), "[lifecycle]\nstart_timeout_secs = 60\n");
    let id = spinner(&server, "stuck").await;
    server
        .wait_env(&id, "starting", |e| e["status"] == "starting")
        .await;
    let path = format!("/api/v1/environments/{id}?force=true");

    let (alice, _) = server.user_token("alice").await;
    let (status, body) = server.call_with("DELETE", &path, None, Some(&alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.to_string().contains("admin"), "{body}");
    let (status, body) = server
        .call_with(
            "DELETE",
            &format!("/api/v1/environments/{id}?force=maybe"),
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(env_of(&server, &id).await["status"], "starting");

    let asked = Instant::now();
    let (status, body) = server.call_with("DELETE", &path, None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let (status, _) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let lines = audit_lines(dir.path());
    let forced: Vec<&Value> = lines
        .iter()
        .filter(|e| e["action"] == "environment.force_delete" && e["target"] == id.as_str())
        .collect();
    assert!(
        forced
            .iter()
            .any(|e| e["outcome"] == "refused" && e["actor"]["user"] == "alice"),
        "{lines:?}"
    );
    assert!(
        forced
            .iter()
            .any(|e| e["outcome"] == "ok" && e["actor"]["user"] == "admin"),
        "{lines:?}"
    );
    // The host is fine and the name is free again.
    let (status, body) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "stuck", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn an_app_connecting_by_id_wakes_what_slept_but_not_what_its_user_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let body =
        json!({"name": "napper", "provider": "local-process", "start": true, "idleStopSecs": 1});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let running = server
        .wait_env(&id, "running and connected", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
    // A file in the workspace, to find again after the nap.
    let mut app = server.app(&id, "t").await;
    let (_, code) = app
        .exec(
            "w",
            &["sh", "-c", "echo kept > note.txt; echo ran >> runs.txt"],
        )
        .await;
    assert_eq!(code, 0);
    drop(app);
    let asleep = server
        .wait_env(&id, "asleep", |e| e["status"] == "stopped")
        .await;
    assert_eq!(asleep["stopReason"], "idle", "{asleep}");

    // An app connecting by id wakes it; what it sends at once is answered once the
    // runtime is back, on the same resource, with the file still there. The new
    // runtime runs only what was sent after the stop: the exec above is not run again.
    let mut app = server.app(&id, "t").await;
    app.send(json!({"type": "echo", "requestId": "early", "payload": "held"}))
        .await;
    let reply = loop {
        let frame = app.next_any().await;
        if frame["requestId"] == "early" {
            break frame;
        }
    };
    assert_eq!(reply["type"], "echoResponse", "{reply}");
    let (out, code) = app.exec("r", &["cat", "note.txt"]).await;
    assert_eq!((out.trim(), code), ("kept", json!(0)));
    let (runs, _) = app.exec("n", &["cat", "runs.txt"]).await;
    assert_eq!(runs, "ran\n", "the exec before the stop ran once");
    let awake = env_of(&server, &id).await;
    assert_eq!(awake["status"], "running", "{awake}");
    assert_eq!(awake["stopReason"], Value::Null, "{awake}");
    assert_eq!(awake["resourceId"], running["resourceId"], "{awake}");
    drop(app);

    // Stopped by its user, it stays stopped: the app is told why and closed with 4015.
    server
        .wait_env(&id, "asleep again", |e| e["status"] == "stopped")
        .await;
    let (status, _) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    let stopped = server.stop_env(&id).await;
    assert_eq!(stopped["stopReason"], "user", "{stopped}");
    let at = server.ws_url(&format!("/ws/app/{id}?thread=t"));
    let mut app = Ws::connect(&at, Some(TOKEN)).await.expect("upgraded");
    let (frames, code) = app.until_close().await;
    assert_eq!(code, Some(4015), "{frames:?}");
    assert_eq!(
        frames.first().map(|f| f["error"]["code"].clone()),
        Some(json!("stopped")),
        "{frames:?}"
    );
    assert_eq!(env_of(&server, &id).await["desiredState"], "stopped");

    // `start=true` needs a token that may write; the operator's may, and it runs.
    let (relay_only, _) = server
        .user_token_with("admin", json!({"scopes": ["relay", "envs:read"]}))
        .await;
    let asking = server.ws_url(&format!("/ws/app/{id}?thread=t&start=true"));
    assert_eq!(
        Ws::connect(&asking, Some(&relay_only)).await.err(),
        Some(StatusCode::FORBIDDEN)
    );
    let mut app = Ws::connect(&asking, Some(TOKEN)).await.expect("upgraded");
    let reply = app
        .request(json!({"type": "echo", "requestId": "after", "payload": 1}))
        .await;
    assert_eq!(reply["type"], "echoResponse", "{reply}");
    server.stop();
}
