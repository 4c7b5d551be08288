//! The JavaScript client (`clients/js`) against a real server: `node --test` runs its
//! tests with the server's URL, admin token and relay window in `TETHER_URL`,
//! `TETHER_TOKEN` and `TETHER_RELAY_WINDOW`, and this test fails with node's output if any of them fails. Without `node` it
//! says so loudly and passes, unless `TETHER_REQUIRE_BROWSER=1` (as `.ci/test` sets).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Server, TOKEN, write_config};

/// The oldest Node the client supports (`engines` in its `package.json`).
const MIN_NODE_MAJOR: u32 = 20;
/// The server's relay window, small enough that a test can overflow it (`lost`).
const RELAY_WINDOW: u32 = 1024;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js")
}

/// `node`'s major version, or `None` when there is no usable `node`.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout);
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Node before 22 has a `WebSocket` only behind a flag.
fn websocket_flag() -> Option<&'static str> {
    let out = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .ok()?;
    (!out.success()).then_some("--experimental-websocket")
}

#[tokio::test]
async fn the_js_client_passes_its_tests_against_a_real_server() {
    let required = std::env::var("TETHER_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    match node_major() {
        Some(major) if major >= MIN_NODE_MAJOR => {}
        found => {
            let why = format!(
                "node >= {MIN_NODE_MAJOR} is needed for the JavaScript client's tests, found {found:?}"
            );
            assert!(
                !required,
                "{why} (TETHER_REQUIRE_BROWSER=1; run .ci/prepare)"
            );
            eprintln!("\n!!!!!!!! SKIPPED: {why}; run .ci/prepare to install it !!!!!!!!\n");
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        &format!("[relay]\nwindow_messages = {RELAY_WINDOW}\n"),
    );
    let server = Server::start(dir.path());

    let tests_dir = client_dir().join("test");
    let mut tests: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .expect("clients/js/test")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.js"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no tests in {}", tests_dir.display());

    let mut node = tokio::process::Command::new("node");
    node.args(websocket_flag())
        .arg("--test")
        .args(&tests)
        .current_dir(client_dir())
        .env("TETHER_URL", &server.base)
        .env("TETHER_TOKEN", TOKEN)
        .env("TETHER_RELAY_WINDOW", RELAY_WINDOW.to_string())
        .kill_on_drop(true);
    let out = node.output().await.expect("running node --test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );
    // Every test file ran and none was skipped or cancelled.
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(stdout.contains("# cancelled 0"), "{stdout}");
    assert!(stdout.contains("# skipped 0"), "{stdout}");
}
