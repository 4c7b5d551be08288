//! The audit log as an operator reads it (`.codebolt/audit.jsonl`, one JSON object per
//! line): what the host does on its own — a recovery after a host start, a restart
//! after a failure — is there, with the `system` actor.

use serde_json::{Value, json};

use crate::support::{Server, runtime_pid, wait_gone, write_config};

const FAST: &str = "[health]\ninterval_ms = 100\ntimeout_ms = 2000\nfailure_threshold = 1\nruntime_grace_ms = 500\n\n[restart]\ninitial_backoff_ms = 100\nmax_backoff_ms = 1000\nmax_retries = 3\nstable_after_ms = 60000\n";

fn audit_lines(dir: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(".codebolt/audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

async fn wait_for_entry(dir: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        if let Some(e) = audit_lines(dir).into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit entry for {what}: {:?}",
            audit_lines(dir)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_hosts_own_restarts_and_recoveries_are_audited_as_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), FAST);
    let server = Server::start(dir.path());
    let env = server
        .running_env("audited", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id").to_owned();

    // A failure the host handles by itself: the runtime dies, the policy restarts it.
    let pid = runtime_pid(&env);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let restart = wait_for_entry(dir.path(), "the restart", |e| {
        e["action"] == "environment.restart" && e["target"] == id.as_str()
    })
    .await;
    assert_eq!(restart["actor"], "system");
    assert_eq!(restart["outcome"], "ok");
    assert!(
        restart["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{restart}"
    );
    let env = server
        .wait_env(&id, "running again", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;

    // A host restart brings the environment back, and says so.
    let last_runtime = runtime_pid(&env);
    server.stop();
    wait_gone(last_runtime).await;
    let server = Server::start(dir.path());
    let recover = wait_for_entry(dir.path(), "the recovery", |e| {
        e["action"] == "environment.recover" && e["target"] == id.as_str()
    })
    .await;
    assert_eq!(recover["actor"], "system");
    server
        .wait_env(&id, "running after the host restart", |e| {
            e["status"] == "running"
        })
        .await;
    server.stop();
    // Nothing in it is a secret: no token of any kind.
    let text =
        std::fs::read_to_string(dir.path().join(".codebolt/audit.jsonl")).unwrap_or_default();
    assert!(!text.contains(crate::support::TOKEN));
}
