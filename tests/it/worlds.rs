//! Versioned provider worlds: a component built against the previous world
//! (`tether:provider@0.1.0`) loads and serves an environment through the host's
//! conversions, and one built against a world the host does not know is refused with
//! a message naming the version.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::Server;
use crate::support::guests::{FUTURE, LEGACY};

#[tokio::test]
async fn an_older_world_runs_and_an_unknown_one_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::copy(LEGACY, providers.join("legacy.wasm")).unwrap();
    std::fs::copy(FUTURE, providers.join("future.wasm")).unwrap();
    let server = Server::start(dir.path());

    let (status, legacy) = server.call("GET", "/api/v1/providers/legacy", None).await;
    assert_eq!(status, StatusCode::OK, "{legacy}");
    assert_eq!(legacy["world"], "0.1.0");
    let (_, builtin) = server
        .call("GET", "/api/v1/providers/local-process", None)
        .await;
    assert_eq!(builtin["world"], "0.2.0");
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let reason = health["reasons"][0].as_str().unwrap_or_default();
    assert!(
        reason.contains("future.wasm") && reason.contains("tether:provider@0.3.0"),
        "the refusal names the file and the version: {reason}"
    );
    let (_, list) = server.call("GET", "/api/v1/providers", None).await;
    let drop_ins: Vec<&Value> = (list.as_array().into_iter().flatten())
        .filter(|p| p["source"]["kind"] != "builtIn")
        .collect();
    assert_eq!(
        drop_ins.iter().map(|p| &p["name"]).collect::<Vec<_>>(),
        vec!["legacy"],
        "besides the built-ins only the legacy provider is loaded: {list}"
    );

    // An environment on the 0.1.0 provider: start, file handlers, diff, health.
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "old", "provider": "legacy", "start": true, "restartPolicy": "never"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().unwrap().to_owned();
    let env = server
        .wait_env(&id, "running", |e| e["status"] == "running")
        .await;
    assert_eq!(env["resourceId"], format!("legacy-{id}"));
    assert_eq!(env["metadata"]["world"], "0.1.0");
    let workspace = dir.path().join(".codebolt/environments/old");
    assert_eq!(
        std::fs::read_to_string(workspace.join("legacy.txt")).unwrap(),
        format!("started {id}\n")
    );
    let mut app = server.app(&id, "t").await;
    let wrote = app
        .request(json!({"type": "providerWriteFile", "requestId": "w", "path": "a.txt", "content": "from 0.2 host"}))
        .await;
    assert_eq!(wrote["message"]["success"], true, "{wrote}");
    let read = app
        .request(json!({"type": "providerReadFile", "requestId": "r", "path": "a.txt"}))
        .await;
    assert_eq!(read["message"]["content"], "from 0.2 host");
    let missing = app
        .request(json!({"type": "providerReadFile", "requestId": "m", "path": "nope.txt"}))
        .await;
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");
    let diff = app
        .request(json!({"type": "providerGetDiffFiles", "requestId": "d"}))
        .await;
    assert_eq!(diff["message"]["files"][0]["path"], "legacy.txt", "{diff}");
    assert_eq!(diff["message"]["files"][0]["change"], "added");
    drop(app);

    // Deleting it reaches the old `on-close-signal(destroy: true)`.
    let (status, _) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let marker = dir
        .path()
        .join(".codebolt/provider-state/legacy")
        .join(format!("destroyed-{id}"));
    assert!(marker.exists(), "the 0.1.0 provider was asked to destroy");
    server.stop();
}
