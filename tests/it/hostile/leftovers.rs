//! What a provider leaves in its workspace for the host to clean up: a chain of
//! directories nested deeper than any path could name (the guest walks down by
//! descriptor), which a removal that opens one directory per level and recurses
//! follows until the host runs out of open files or stack.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use super::rig::{Rig, TETHER_TOML};
use crate::support::{TOKEN, WAIT};

/// Removes a tree with `rm -rf` when dropped: the test's own clean-up (std's recursive
/// removal, when the rig's directory goes) would overflow the test thread's stack on a
/// tree this deep and abort every test, instead of failing this one.
struct RemovedWithoutRecursion(std::path::PathBuf);

impl Drop for RemovedWithoutRecursion {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::process::Command::new("rm")
                .arg("-rf")
                .arg(&self.0)
                .status();
        }
    }
}

#[tokio::test]
async fn hostile_workspace_nested_30000_deep_is_removed_with_the_host_unharmed() {
    // Making 30,000 directories can take longer than the rig's 3 s start.
    let mut rig = Rig::start(|dir| {
        let toml = TETHER_TOML.replace("start_timeout_secs = 3", "start_timeout_secs = 120");
        std::fs::write(dir.join("tether.toml"), toml).expect("tether.toml");
    })
    .await;
    // Dropped before the rig, whatever fails.
    let _removed = RemovedWithoutRecursion(rig.workspace("deep"));
    let env = rig
        .attack("deep", json!({"attack": "nest", "depth": 30_000}))
        .await;
    assert_eq!(env["status"], "running", "{env}");
    assert_eq!(env["metadata"]["outcome"], "nested 30000 directories");
    let id = env["id"].as_str().expect("id").to_owned();
    let workspace = rig.workspace("deep");
    assert!(workspace.join("d/d/d").is_dir());
    // Sent apart: a host that dies answering it must fail this test, not abort it in
    // the clean-up below.
    let delete = reqwest::Client::new()
        .delete(format!("{}/api/v1/environments/{id}", rig.server.base))
        .bearer_auth(TOKEN)
        .send();
    let deleted = tokio::spawn(delete);
    // Watched without requests, so that a host that dies shows its log here.
    let deadline = Instant::now() + WAIT;
    while workspace.exists() {
        let running = rig.server.running();
        if !running || Instant::now() > deadline {
            let log = rig.server.log();
            let tail = &log[log.len().saturating_sub(3000)..];
            panic!("the workspace is still there (server running: {running}); log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = deleted.await.expect("delete task").map(|r| r.status());
    assert!(answer.as_ref().is_ok_and(|s| s.is_success()), "{answer:?}");
    let (status, _) = (rig.server)
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!rig.logged(&id, "could not remove the workspace"));
    rig.finish().await;
}
