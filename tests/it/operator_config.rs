//! `tether.toml` on a running host: a grant added to the file lets the next start
//! succeed without a restart (picked up by the watcher or on SIGHUP), a refusal
//! names the key to add, an invalid edit is reported and harms nothing, and the
//! start-up log names the file. Plus the CLI around it: `provider inspect` into a
//! closed pipe, on a file that is not WebAssembly, with a missing or no config.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, WAIT, guests, write_config};

/// The config of an environment whose runtime is this build's `tether` by its full
/// path: outside the default grant, which names `tether` only.
fn full_path_runtime() -> Value {
    json!({"command": env!("CARGO_BIN_EXE_tether"), "args": ["runtime"]})
}

/// A `local-process` grant that admits the full-path runtime.
fn grant(extra: &str) -> String {
    format!(
        "[providers.local-process]\n\
         commands = [{{ program = {:?}, args = [\"runtime\"] }}]\n\
         env = [\"PATH\", \"HOME\", \"LANG\", \"RUST_LOG\"]\n\
         set_env = [\"TETHER_RUNTIME_URL\", \"TETHER_RUNTIME_TOKEN\", \"TETHER_ENVIRONMENT_ID\"]\n\
         {extra}",
        env!("CARGO_BIN_EXE_tether")
    )
}

/// Creates a started environment and waits until it has failed; returns its view.
async fn failed_start(server: &Server, name: &str) -> Value {
    let body = json!({"name": name, "provider": "local-process", "config": full_path_runtime(), "start": true});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id").to_owned();
    server
        .wait_env(&id, "error", |e| e["status"] == "error")
        .await
}

/// Starts `id` again and waits until it runs.
async fn start_runs(server: &Server, id: &str) {
    let (status, body) = server
        .call("POST", &format!("/api/v1/environments/{id}/start"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    server
        .wait_env(id, "running", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
}

/// Polls `GET /api/v1/config/status` until `pred` holds.
async fn wait_status(server: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.call("GET", "/api/v1/config/status", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "config status never showed {what}; last: {body}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `text` to `path` the way editors and tools do: a new file renamed over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("writing the new config");
    std::fs::rename(&tmp, path).expect("renaming it into place");
}

#[tokio::test]
async fn a_grant_added_to_tether_toml_lets_the_next_start_succeed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let config_path = dir.path().canonicalize().unwrap().join("tether.toml");
    assert!(
        server.log().contains("no tether.toml: built-in defaults"),
        "{}",
        server.log()
    );
    let failed = failed_start(&server, "widen").await;
    let reason = failed["lastError"].as_str().unwrap_or_default();
    // The refusal names the entry, the key, the table and the file, by its name: where
    // the operator keeps it is not the environment owner's business.
    let wanted = format!(
        "add {{ program = {:?}, args = [\"runtime\"] }} to commands in [providers.local-process] of tether.toml",
        env!("CARGO_BIN_EXE_tether"),
    );
    assert!(reason.contains(&wanted), "{reason}\nwanted: {wanted}");
    assert!(server.log().contains(&wanted), "{}", server.log());

    write_config(dir.path(), &grant(""));
    let status = wait_status(&server, "the grant applied", |s| {
        s["lastReload"]["outcome"] == "applied"
    })
    .await;
    assert_eq!(status["lastReload"]["trigger"], "file", "{status}");
    assert_eq!(status["found"], true, "{status}");
    assert_eq!(
        status["path"],
        config_path.display().to_string(),
        "{status}"
    );
    assert!(
        (status["lastReload"]["changed"].as_array().unwrap())
            .contains(&json!("providers.local-process.commands")),
        "{status}"
    );
    let id = failed["id"].as_str().unwrap();
    start_runs(&server, id).await;
    let log = server.log();
    assert!(log.contains("tether.toml reloaded"), "{log}");
    server.stop();
}

#[tokio::test]
async fn sighup_reloads_a_change_the_watcher_cannot_see() {
    // tether.toml is a symlink into another directory: editing its target makes no
    // event where the host watches, so only SIGHUP picks the change up.
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real.toml");
    std::fs::write(&target, "[limits]\nmax_processes = 32\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("tether.toml")).unwrap();
    let server = Server::start(dir.path());
    assert!(server.log().contains("config: loaded"), "{}", server.log());
    let failed = failed_start(&server, "hup").await;
    let id = failed["id"].as_str().unwrap().to_owned();

    std::fs::write(&target, grant("")).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, status) = server.call("GET", "/api/v1/config/status", None).await;
    assert!(status["lastReload"].is_null(), "{status}");

    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let status = wait_status(&server, "a SIGHUP reload", |s| {
        s["lastReload"]["outcome"] == "applied"
    })
    .await;
    assert_eq!(status["lastReload"]["trigger"], "sighup", "{status}");
    start_runs(&server, &id).await;
    server.stop();
}

#[tokio::test]
async fn an_invalid_edit_is_reported_and_the_last_good_grants_stay_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret-operator-value";
    write_config(
        dir.path(),
        &grant(&format!("config = {{ apiKey = \"{secret}\" }}\n")),
    );
    let server = Server::start(dir.path());
    let env = server
        .running_env("keep", "local-process", full_path_runtime())
        .await;
    let id = env["id"].as_str().unwrap().to_owned();
    server.stop_env(&id).await;

    let path = dir.path().join("tether.toml");
    replace(&path, "[providers.local-process\ncommands = [");
    let status = wait_status(&server, "the failed reload", |s| {
        s["lastReload"]["outcome"] == "failed"
    })
    .await;
    let error = status["lastReload"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("tether.toml"), "{status}");
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        server.log().contains("tether.toml not reloaded"),
        "{}",
        server.log()
    );
    // The grant of the last good file still lets it start.
    start_runs(&server, &id).await;
    server.stop_env(&id).await;

    // A bad grant pattern is refused the same way.
    replace(&path, &grant("urls = [\"not a url\"]\n"));
    wait_status(&server, "the second failed reload", |s| {
        s["lastReload"]["outcome"] == "failed"
            && (s["lastReload"]["error"].as_str())
                .is_some_and(|e| e.contains("providers.local-process"))
    })
    .await;

    // So is a file over 1 MiB, valid as it may be: it is not read past the limit.
    replace(&path, &format!("{}#{}\n", grant(""), "x".repeat(1 << 20)));
    wait_status(&server, "the oversized file refused", |s| {
        s["lastReload"]["outcome"] == "failed"
            && (s["lastReload"]["error"].as_str()).is_some_and(|e| e.contains("at most 1 MiB"))
    })
    .await;

    // A later valid edit applies, and its diff names keys, never the values.
    replace(
        &path,
        &grant("config = { apiKey = \"another-s3cret\" }\n[relay]\nwindow_messages = 100\n"),
    );
    let status = wait_status(&server, "the fixed file applied", |s| {
        s["lastReload"]["outcome"] == "applied"
    })
    .await;
    let changed = status["lastReload"]["changed"].clone();
    assert!(
        changed
            .as_array()
            .unwrap()
            .contains(&json!("providers.local-process.config.apiKey")),
        "{status}"
    );
    assert_eq!(status["pendingRestart"], json!(["relay.window_messages"]));
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
    start_runs(&server, &id).await;
    let log = server.log();
    assert!(
        !log.contains(secret) && !log.contains("another-s3cret"),
        "{log}"
    );
    assert!(log.contains("applied only when the host restarts"), "{log}");
    server.stop();
}

#[tokio::test]
async fn config_status_is_for_admins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (status, _) = server
        .call_with("GET", "/api/v1/config/status", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server.call("GET", "/api/v1/config/status", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["found"], false, "{body}");
    assert!(body["lastReload"].is_null(), "{body}");
    server.stop();
}

fn tether(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command.current_dir(dir);
    command
}

#[test]
fn inspect_into_a_closed_pipe_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{} provider inspect {} | head -c 1",
        env!("CARGO_BIN_EXE_tether"),
        guests::LOCAL_PROCESS
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"{");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
}

#[test]
fn inspect_says_what_is_wrong_with_a_file_and_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "#!/bin/sh\necho not wasm\n").unwrap();
    let out = tether(dir.path())
        .args(["provider", "inspect"])
        .arg(&text)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "not a WebAssembly component: {} starts with \"#!/bin/sh",
            text.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("[35, 33"), "{stderr}");

    let out = tether(dir.path())
        .args([
            "provider",
            "inspect",
            guests::LOCAL_PROCESS,
            "--config",
            "missing.toml",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config file missing.toml not found"),
        "{stderr}"
    );

    // No config anywhere: the report says it shows the defaults.
    let out = tether(dir.path())
        .args(["provider", "inspect", guests::LOCAL_PROCESS])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let note = report["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("no tether.toml found in ")
            && note.ends_with(": showing what the defaults grant"),
        "{report}"
    );
    assert!(report["config"].is_null(), "{report}");

    // A relative --config is found in the data directory.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_config(&data, &grant(""));
    std::fs::rename(data.join("tether.toml"), data.join("ops.toml")).unwrap();
    let out = tether(dir.path())
        .args([
            "provider",
            "inspect",
            guests::LOCAL_PROCESS,
            "--config",
            "ops.toml",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        (report["config"].as_str()).is_some_and(|c| c.ends_with("data/ops.toml")),
        "{report}"
    );
    assert!(report["note"].is_null(), "{report}");
}

#[test]
fn serve_with_a_missing_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = tether(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "nope.toml",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config file nope.toml not found"),
        "{stderr}"
    );
}

#[tokio::test]
async fn operator_secrets_in_a_config_others_may_read_are_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let secret = "s3cret-operator-value";
    write_config(
        dir.path(),
        &grant(&format!("config = {{ apiKey = \"{secret}\" }}\n")),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Server::start(dir.path());
    let log = server.log();
    assert!(
        log.contains("holds operator config values and other users may read it")
            && log.contains("0644"),
        "{log}"
    );
    assert!(!log.contains(secret), "{log}");
    server.stop();

    // Private, it is not (the log file goes on from the first start).
    let warned = |log: &str| log.matches("other users may read it").count();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(dir.path());
    let log = server.log();
    assert!(log.matches("config: loaded").count() >= 2, "{log}");
    assert_eq!(warned(&log), 1, "{log}");
    server.stop();
}
