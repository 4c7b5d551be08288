//! Drop-in providers: a `.wasm` in `.codebolt/providers/` is loaded at start (a
//! drop-in with a built-in's name wins), and a corrupt one is reported, not fatal.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::Server;
use crate::support::guests::LOCAL_PROCESS;

#[tokio::test]
async fn a_drop_in_replaces_the_built_in_and_a_corrupt_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::copy(LOCAL_PROCESS, providers.join("local-process.wasm")).unwrap();
    std::fs::write(
        providers.join("broken.wasm"),
        b"\0asm\x0d\0\x01\0 not a component",
    )
    .unwrap();
    let server = Server::start(dir.path());

    let (status, p) = server
        .call("GET", "/api/v1/providers/local-process", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["source"]["kind"], "dropIn", "{p}");
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "degraded");
    let reason = health["reasons"][0].as_str().unwrap_or_default();
    assert!(reason.contains("broken.wasm"), "{reason}");

    // The drop-in serves environments as the built-in did.
    let env = server
        .running_env("dropped", "local-process", json!({}))
        .await;
    assert_eq!(env["providerVersion"], p["version"]);
    server.stop();
}
