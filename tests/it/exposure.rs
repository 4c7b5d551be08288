//! What callers without an admin token learn about the host: `/healthz` without a
//! token or with a user's, and a tenant's views of its own environments (REST and
//! `/ws/events`), never name the host's files, paths or reasons.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::guests::LOCAL_PROCESS;
use crate::support::{Server, TOKEN, WAIT, Ws, write_config};

/// A data directory whose `local-process` is a drop-in (so views have a file path to
/// show) beside a file that does not load (so `/healthz` has a reason naming a file).
fn drop_in_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::copy(LOCAL_PROCESS, providers.join("local-process.wasm")).expect("copy");
    std::fs::write(
        providers.join("broken.wasm"),
        b"\0asm\x0d\0\x01\0 not a component",
    )
    .expect("broken file");
    write_config(
        dir.path(),
        "[providers.local-process]\nreplace_builtin = { file = \"local-process.wasm\" }\n\
         [auth]\nmax_failures_per_minute = 3\n",
    );
    dir
}

/// `/healthz` named the broken provider file, with its absolute path, to anyone who
/// asked, no token needed. Now only an admin's token gets `reasons`, `storage` and
/// `pendingRemovals`; anyone else gets the status alone, still computed from them.
#[tokio::test]
async fn healthz_tells_its_reasons_to_an_admin_only() {
    let dir = drop_in_host();
    let server = Server::start(dir.path());
    let (alice, _) = server.user_token("alice").await;

    let (status, full) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(full["status"], "degraded", "{full}");
    assert!(full.to_string().contains("broken.wasm"), "{full}");
    assert_eq!(full["pendingRemovals"], 0, "{full}");
    assert!(full.get("storage").is_some(), "{full}");

    let short = json!({"status": "degraded"});
    for token in [None, Some(alice.as_str()), Some("tth_not-a-token-at-all")] {
        let (status, body) = server.call_with("GET", "/healthz", None, token).await;
        assert_eq!((status, &body), (StatusCode::OK, &short), "as {token:?}");
    }
    server.stop();
}

/// A bad token on `/healthz` is not refused, but it is counted like one anywhere
/// else: `/healthz` is no way to tell good tokens from bad ones past the throttle.
#[tokio::test]
async fn bad_tokens_on_healthz_count_towards_the_throttle() {
    let dir = drop_in_host();
    let server = Server::start(dir.path());
    for _ in 0..3 {
        let (status, body) = server
            .call_with("GET", "/healthz", None, Some("tth_guess-guess-guess"))
            .await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "degraded"}))
        );
    }
    // Throttled now: even the admin's token gets the short form here, and 429 elsewhere.
    let (status, body) = server.call("GET", "/healthz", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "degraded"}))
    );
    let (status, _) = server.call("GET", "/api/v1/whoami", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    server.stop();
}

/// The host paths an admin's view of `env` shows: its workspace, its resource and
/// its drop-in provider's file.
fn host_paths(env: &Value) -> Vec<String> {
    let paths = [
        &env["workspacePath"],
        &env["resourceId"],
        &env["providerStatus"]["loaded"]["source"]["path"],
    ];
    let paths: Vec<String> = (paths.iter())
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect();
    for p in &paths {
        assert!(p.starts_with('/'), "an admin sees absolute paths: {env}");
    }
    paths
}

/// A tenant's own environment showed `workspacePath`, `resourceId` (for
/// `local-process`, the same absolute path under the data directory) and its drop-in
/// provider's absolute path, on REST and in `/ws/events`. They are the admin's now.
#[tokio::test]
async fn a_tenant_sees_its_environment_without_the_host_paths() {
    let dir = drop_in_host();
    let server = Server::start(dir.path());
    let (alice, _) = server.user_token("alice").await;
    let events_url = server.ws_url("/ws/events");
    let mut admin_events = Ws::connect(&events_url, Some(TOKEN)).await.expect("events");
    let mut alice_events = Ws::connect(&events_url, Some(&alice))
        .await
        .expect("events");
    for ws in [&mut admin_events, &mut alice_events] {
        assert_eq!(ws.next_any().await["type"], "snapshot");
    }

    let (status, made) = server.create_as(&alice, "mine", true).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().expect("id").to_owned();
    let admin_view = server
        .wait_env(&id, "running with a workspace", |e| {
            e["status"] == "running" && e["workspacePath"].is_string()
        })
        .await;
    let paths = host_paths(&admin_view);
    let hidden = |shown: &str| {
        for p in &paths {
            assert!(!shown.contains(p.as_str()), "{p} shown to alice: {shown}");
        }
    };
    let alone = |env: &Value| {
        assert_eq!(env["workspacePath"], Value::Null, "{env}");
        assert_eq!(env["resourceId"], Value::Null, "{env}");
        assert_eq!(
            env["providerStatus"]["loaded"]["source"],
            json!({"kind": "dropIn"}),
            "{env}"
        );
        hidden(&env.to_string());
    };

    // REST: the answers to her create, read, list and changes.
    alone(&made);
    let path = format!("/api/v1/environments/{id}");
    let (_, got) = server.call_with("GET", &path, None, Some(&alice)).await;
    alone(&got);
    let (_, list) = (server.call_with("GET", "/api/v1/environments", None, Some(&alice))).await;
    alone(&list[0]);
    let patch = json!({"idleStopSecs": 3600});
    let (_, patched) = server
        .call_with("PATCH", &path, Some(patch), Some(&alice))
        .await;
    alone(&patched);
    let (_, restarted) = server
        .call_with("POST", &format!("{path}/restart"), None, Some(&alice))
        .await;
    alone(&restarted);

    // Events: the admin gets a frame with the workspace; alice gets the same frames,
    // in the same order, without it.
    let mut seen = 0;
    loop {
        let frame = admin_events.next_any().await;
        seen += 1;
        if frame["environment"]["workspacePath"].is_string() {
            break;
        }
    }
    for _ in 0..seen {
        let frame = alice_events.next_any().await;
        hidden(&frame.to_string());
        if frame["environment"].is_object() {
            alone(&frame["environment"]);
        }
    }
    let mut again = Ws::connect(&events_url, Some(&alice))
        .await
        .expect("events");
    let snapshot = again.next_any().await;
    alone(&snapshot["environments"][0]);

    // The admin still sees every path.
    let (_, admins) = server.call("GET", &path, None).await;
    host_paths(&admins);
    server.stop();
}

/// `id`'s log as `token` reads it: the tail, or with `follow` what a follower is sent
/// while the environment restarts, up to its `environment running` line.
async fn log_text(server: &Server, id: &str, token: &str, follow: bool) -> String {
    if follow {
        let mut response = server.follow_logs(id, token).await;
        let restart = format!("/api/v1/environments/{id}/restart");
        let (status, _) = server.call("POST", &restart, None).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let mut text = String::new();
        while !text.contains("environment running") {
            let chunk = tokio::time::timeout(WAIT, response.chunk()).await;
            let chunk = chunk.expect("a line in time").expect("the body");
            text.push_str(&String::from_utf8_lossy(&chunk.expect("more lines")));
        }
        return text;
    }
    let url = format!("{}/api/v1/environments/{id}/logs?tail=1000", server.base);
    let resp = (reqwest::Client::new().get(url).bearer_auth(token).send())
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.expect("the log")
}

/// A tenant's environment log said where the host keeps its workspace: the
/// provider's `using new workspace /abs/…` and the host's `environment running
/// resource=/abs/…`. A user's token reads `<data-dir>` there now; the admin's, the path.
#[tokio::test]
async fn a_tenant_reads_its_log_without_the_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let data_dir = std::fs::canonicalize(dir.path()).expect("canonical");
    let data_dir = data_dir.to_string_lossy().into_owned();
    let (alice, _) = server.user_token("alice").await;
    let (status, made) = server.create_as(&alice, "logged", true).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().expect("id").to_owned();
    server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;

    let admins = log_text(&server, &id, TOKEN, false).await;
    assert!(
        admins.contains(&format!("resource={data_dir}/")),
        "{admins}"
    );
    for follow in [false, true] {
        let hers = log_text(&server, &id, &alice, follow).await;
        assert!(
            !hers.contains(&data_dir),
            "{data_dir} shown to alice: {hers}"
        );
        assert!(
            hers.contains("resource=<data-dir>/.codebolt/environments/logged"),
            "{hers}"
        );
    }
    server.stop();
}

/// A start the operator's grant refuses said what to add "of
/// /abs/path/tether.toml" in `lastError`, which the environment's owner reads: with
/// `local-process` closed to tenants (`commands = []`, as a hosted set-up should),
/// every user trying it learnt where the operator keeps the file. It is named by its
/// name now.
#[tokio::test]
async fn a_refused_start_names_tether_toml_without_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), "[providers.local-process]\ncommands = []\n");
    let server = Server::start(dir.path());
    let data_dir = std::fs::canonicalize(dir.path()).expect("canonical");
    let data_dir = data_dir.to_string_lossy().into_owned();
    let (alice, _) = server.user_token("alice").await;
    let (status, made) = server.create_as(&alice, "refused", true).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().expect("id").to_owned();
    server
        .wait_env(&id, "refused", |e| e["status"] == "error")
        .await;
    let path = format!("/api/v1/environments/{id}");
    let (_, env) = server.call_with("GET", &path, None, Some(&alice)).await;
    let error = env["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("to commands in [providers.local-process] of tether.toml"),
        "{env}"
    );
    assert!(
        !error.contains(&data_dir),
        "{data_dir} shown to alice: {error}"
    );
    server.stop();
}

/// A failed start's `lastError` named the data directory to the environment's owner
/// (`creating workspace /abs/.codebolt/environments/NAME: …`) on REST, in
/// `/ws/events` and in the `environmentStatus` an app is greeted with. Anyone but an
/// admin reads `<data-dir>` there now.
#[tokio::test]
async fn a_tenant_reads_last_error_without_the_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let data_dir = std::fs::canonicalize(dir.path()).expect("canonical");
    let data_dir = data_dir.to_string_lossy().into_owned();
    let (alice, _) = server.user_token("alice").await;
    let mut events = Ws::connect(&server.ws_url("/ws/events"), Some(&alice))
        .await
        .expect("events");
    assert_eq!(events.next_any().await["type"], "snapshot");
    let (status, made) = server.create_as(&alice, "blocked", false).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let id = made["id"].as_str().expect("id").to_owned();
    // A file where its workspace would be made: the start fails naming that path.
    let workspace = dir.path().join(".codebolt/environments/blocked");
    std::fs::create_dir_all(workspace.parent().expect("parent")).expect("environments dir");
    let _ = std::fs::remove_dir(&workspace);
    std::fs::write(&workspace, "not a directory").expect("blocking file");
    let path = format!("/api/v1/environments/{id}");
    let (status, _) = server
        .call_with("POST", &format!("{path}/start"), None, Some(&alice))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let admins = server
        .wait_env(&id, "failed", |e| e["status"] == "error")
        .await;
    let error = admins["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{data_dir}/.codebolt/environments/blocked")),
        "{admins}"
    );

    let hers = |shown: &str| {
        assert!(
            !shown.contains(&data_dir),
            "{data_dir} shown to alice: {shown}"
        );
    };
    let (_, env) = server.call_with("GET", &path, None, Some(&alice)).await;
    let error = env["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("<data-dir>/.codebolt/environments/blocked"),
        "{env}"
    );
    hers(&env.to_string());
    loop {
        let frame = events.next_any().await;
        hers(&frame.to_string());
        if frame["type"] == "environmentStatus" && frame["status"] == "error" {
            assert!(frame["lastError"].is_string(), "{frame}");
            break;
        }
    }
    let app_url = server.ws_url(&format!("/ws/app/{id}?thread=t"));
    let mut app = Ws::connect(&app_url, Some(&alice)).await.expect("app");
    let greeting = app.next_any().await;
    assert_eq!(greeting["type"], "environmentStatus", "{greeting}");
    assert!(greeting["lastError"].is_string(), "{greeting}");
    hers(&greeting.to_string());
    server.stop();
}
