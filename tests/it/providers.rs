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

/// `tether provider new` writes a crate that builds for wasm32-wasip2 as it is and
/// serves environments once dropped in and granted.
#[tokio::test]
async fn a_scaffolded_provider_builds_and_serves_an_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crate_dir = dir.path().join("scaffolded");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["provider", "new", "scaffolded", "--path"])
        .arg(&crate_dir)
        .output()
        .expect("tether provider new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Built as an author would, in a target dir shared across runs of this test.
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = std::process::Command::new(cargo)
        .args(["build", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo build of the scaffold");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let providers = dir.path().join("data/.codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::fs::copy(
        target.join("wasm32-wasip2/debug/scaffolded.wasm"),
        providers.join("scaffolded.wasm"),
    )
    .unwrap();
    let data = dir.path().join("data");
    crate::support::write_config(
        &data,
        "[providers.scaffolded]\ncommands = [{ program = \"tether\", args = [\"runtime\"] }]\nenv = [\"PATH\"]\n",
    );
    let server = Server::start(&data);
    let env = server
        .running_env("from-scaffold", "scaffolded", json!({}))
        .await;
    assert_eq!(env["provider"], "scaffolded");
    let mut app = server.app(env["id"].as_str().expect("id"), "t").await;
    let echo = app
        .request(json!({"type": "echo", "requestId": "1", "payload": "hi"}))
        .await;
    assert_eq!(echo["payload"], "hi");
    server.stop();
}
