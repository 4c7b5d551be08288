//! Issue 10, items 1 and 3: a provider's name is its identity — a state directory,
//! operator config and a default grant hang off it — so a drop-in cannot pick a name
//! that is a path, nor a built-in's name without the operator's consent. The drop-ins
//! are the `impostor` guest with a test-chosen `info()` patched into its component.

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::guests::IMPOSTOR;
use crate::support::{Server, write_config};

/// What the impostor guest's slot starts with; the JSON spec follows, space-padded.
const MARKER: &[u8] = b"@@TETHER-IMPOSTOR-SLOT@@";
/// The slot's length, marker included (`SLOT_LEN` in the guest).
const SLOT_LEN: usize = 1024;

/// The impostor component with `spec` (`{"name": …, "descriptionBytes": …}`) patched
/// into its slot: same length, so the component stays valid.
pub(super) fn impostor(spec: Value) -> Vec<u8> {
    let mut bytes = std::fs::read(IMPOSTOR).expect("impostor.wasm");
    let found: Vec<usize> = (bytes.windows(MARKER.len()))
        .enumerate()
        .filter(|(_, w)| *w == MARKER)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found.len(), 1, "exactly one slot in the component");
    let at = found[0] + MARKER.len();
    let room = SLOT_LEN - MARKER.len();
    let json = spec.to_string();
    assert!(json.len() <= room, "spec too long for the slot");
    bytes[at..at + room].fill(b' ');
    bytes[at..at + json.len()].copy_from_slice(json.as_bytes());
    bytes
}

/// Drops the impostor with `spec` in as `file`.
pub(super) fn drop_in(data: &Path, file: &str, spec: Value) {
    let providers = data.join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::write(providers.join(file), impostor(spec)).expect("drop in");
}

/// `/healthz`, asserting it is degraded, and its reasons.
pub(super) async fn degraded_reasons(server: &Server) -> Vec<String> {
    let (status, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health["status"],
        "degraded",
        "{health}; log:\n{}",
        server.log()
    );
    (health["reasons"].as_array().expect("reasons").iter())
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// Every path under `dir`, for comparing before and after.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            out.push(path.display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn hostile_provider_names_that_are_paths_are_refused_at_load() {
    let outer = tempfile::tempdir().expect("tempdir");
    let data = outer.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    drop_in(&data, "slash.wasm", json!({"name": "/"}));
    drop_in(&data, "climber.wasm", json!({"name": "x/../../.."}));
    drop_in(
        &data,
        "newline.wasm",
        json!({"name": "a\nERROR forged\u{1b}[2J"}),
    );
    let before = tree(outer.path());
    let server = Server::start(&data);

    let reasons = degraded_reasons(&server).await;
    for file in ["slash.wasm", "climber.wasm", "newline.wasm"] {
        let reason = (reasons.iter())
            .find(|r| r.contains(file))
            .unwrap_or_else(|| panic!("{file} not reported: {reasons:?}"));
        assert!(reason.contains("invalid provider name"), "{reason}");
    }
    // The providers API says why, as for any file that failed to load.
    let (status, body) = server.call("GET", "/api/v1/providers/slash", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("slash.wasm failed to load") && message.contains("invalid provider name"),
        "{message}"
    );
    let (_, list) = server.call("GET", "/api/v1/providers", None).await;
    let names: Vec<&str> = (list.as_array().expect("list").iter())
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains('/') || n.contains('\n')),
        "{names:?}"
    );

    // No environment can be created on them.
    for provider in ["/", "x/../../.."] {
        let (status, body) = server
            .call(
                "POST",
                "/api/v1/environments",
                Some(json!({"name": "victim", "provider": provider, "start": true})),
            )
            .await;
        assert!(status.is_client_error(), "{status} {body}");
    }
    // The refusal is logged with the file, on one line, the name escaped.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("provider failed to load") && l.contains("climber.wasm")),
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("ERROR forged")), "{log}");
    assert!(!log.contains('\u{1b}'), "a raw escape reached the log");
    server.stop();

    // Nothing appeared outside the data directory, nor a state directory inside it.
    let after: Vec<String> = (tree(outer.path()).into_iter())
        .filter(|p| !p.starts_with(&data.display().to_string()))
        .collect();
    let before: Vec<String> = (before.into_iter())
        .filter(|p| !p.starts_with(&data.display().to_string()))
        .collect();
    assert_eq!(after, before);
    assert!(!data.join(".codebolt/provider-state").exists());
}

/// `tether.toml` with an operator secret for `local-process`, and `extra` lines in
/// its table.
fn secret_config(extra: &str) -> String {
    format!("[providers.local-process]\nconfig = {{ apiKey = \"s3cret\" }}\n{extra}\n")
}

#[tokio::test]
async fn hostile_drop_in_with_a_built_in_name_is_refused_without_the_operators_consent() {
    // No consent: refused, the built-in serves, the secret goes only to it.
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &secret_config(""));
    drop_in(
        dir.path(),
        "my-local-process.wasm",
        json!({"name": "local-process"}),
    );
    let server = Server::start(dir.path());
    let reasons = degraded_reasons(&server).await;
    let reason = (reasons.iter())
        .find(|r| r.contains("my-local-process.wasm"))
        .unwrap_or_else(|| panic!("the impostor is not reported: {reasons:?}"));
    assert!(
        reason.contains(
            "[providers.local-process] replace_builtin = { file = \"my-local-process.wasm\" }"
        ),
        "{reason}"
    );
    let (_, p) = server
        .call("GET", "/api/v1/providers/local-process", None)
        .await;
    assert_eq!(p["source"]["kind"], "builtIn", "{p}");
    let env = server
        .running_env("plain", "local-process", json!({}))
        .await;
    assert!(env["metadata"].get("impostor").is_none(), "{env}");
    assert!(
        env["metadata"]["pid"].is_string(),
        "the built-in ran: {env}"
    );
    assert!(!env.to_string().contains("s3cret"), "{env}");
    server.stop();

    // Consent for another file (by hash) does not cover this one.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = "0".repeat(64);
    write_config(
        dir.path(),
        &secret_config(&format!("replace_builtin = {{ sha256 = \"{other}\" }}")),
    );
    drop_in(
        dir.path(),
        "my-local-process.wasm",
        json!({"name": "local-process"}),
    );
    let server = Server::start(dir.path());
    let reasons = degraded_reasons(&server).await;
    assert!(
        reasons.iter().any(|r| r.contains("my-local-process.wasm")),
        "{reasons:?}"
    );
    let env = server
        .running_env("plain", "local-process", json!({}))
        .await;
    assert!(env["metadata"].get("impostor").is_none(), "{env}");
    server.stop();

    // Consent naming the file: it replaces the built-in and gets what the operator
    // configured for that name, by the operator's choice.
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        &secret_config("replace_builtin = { file = \"my-local-process.wasm\" }"),
    );
    drop_in(
        dir.path(),
        "my-local-process.wasm",
        json!({"name": "local-process"}),
    );
    let server = Server::start(dir.path());
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(health["status"], "ok", "{health}");
    let (_, p) = server
        .call("GET", "/api/v1/providers/local-process", None)
        .await;
    assert_eq!(p["source"]["kind"], "dropIn", "{p}");
    // The impostor starts no runtime: running is as far as it gets.
    let body = json!({"name": "chosen", "provider": "local-process", "start": true});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id");
    let env = server
        .wait_env(id, "running", |e| e["status"] == "running")
        .await;
    assert_eq!(env["metadata"]["impostor"], "yes", "{env}");
    // It was handed the table's config: its metadata quotes the operator's value,
    // which the API shows as `<config:apiKey>` (never the value itself).
    let config = env["metadata"]["config"].as_str().unwrap_or_default();
    assert!(config.contains("<config:apiKey>"), "{env}");
    assert!(!env.to_string().contains("s3cret"), "{env}");
    server.stop();
}

#[tokio::test]
async fn hostile_replace_builtin_for_a_name_that_is_no_built_in_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(
        dir.path(),
        "[providers.mine]\nreplace_builtin = { file = \"mine.wasm\" }\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(dir.path().join("tether.toml"))
        .output()
        .expect("tether serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("providers.mine.replace_builtin: mine is not a built-in provider"),
        "{stderr}"
    );
}

#[tokio::test]
async fn hostile_control_characters_in_a_provider_version_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The version is shown with every load and start, and `tether provider install`
    // printed it as it was: an escape in it would drive the operator's terminal.
    let forged = "1.0\n2000-01-01T00:00:00.000000Z ERROR tether: FORGED\u{1b}[2J";
    drop_in(
        dir.path(),
        "forger.wasm",
        json!({"name": "forger", "version": forged}),
    );
    drop_in(
        dir.path(),
        "plain.wasm",
        json!({"name": "plain", "version": "1.0.0-rc.1+build.5"}),
    );
    let server = Server::start(dir.path());
    let reasons = degraded_reasons(&server).await;
    let reason = (reasons.iter())
        .find(|r| r.contains("forger.wasm"))
        .unwrap_or_else(|| panic!("not reported: {reasons:?}; log:\n{}", server.log()));
    assert!(
        reason.contains("version of provider forger has control characters"),
        "{reason}"
    );
    let (status, _) = server.call("GET", "/api/v1/providers/plain", None).await;
    assert_eq!(status, StatusCode::OK, "a plain version loads");
    let log = server.log();
    assert!(!log.lines().any(|l| l.starts_with("2000-01-01")), "{log}");
    assert!(!log.contains('\u{1b}'), "a raw escape reached the log");
    server.stop();
}

#[tokio::test]
async fn hostile_directory_request_through_a_symlink_out_of_the_grant_is_denied() {
    let outer = tempfile::tempdir().expect("tempdir");
    let (data, granted, secret) = (
        outer.path().join("data"),
        outer.path().join("granted"),
        outer.path().join("secret"),
    );
    for d in [&data, &granted.join("real"), &secret] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // A link a child process (or the guest itself, through WASI) could have planted.
    std::os::unix::fs::symlink("../secret", granted.join("escape")).expect("symlink");
    let (real, escape) = (
        granted.join("real").display().to_string(),
        granted.join("escape").display().to_string(),
    );
    drop_in(
        &data,
        "dirs.wasm",
        json!({"name": "dirs", "directories": [real, escape]}),
    );
    write_config(
        &data,
        &format!(
            "[providers.dirs]\ndirectories = [{}]\n",
            json!(granted.display().to_string())
        ),
    );
    let server = Server::start(&data);
    let (status, view) = server.call("GET", "/api/v1/providers/dirs", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["denied"]["directories"], json!([escape]), "{view}");
    // A start preopens the real directory and refuses the link, saying which. The
    // impostor starts no runtime: running is as far as it gets.
    let body = json!({"name": "linked", "provider": "dirs", "start": true});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let id = env["id"].as_str().expect("id");
    server
        .wait_env(id, "running", |e| e["status"] == "running")
        .await;
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains(id)
            && l.contains("directory not preopened")
            && l.contains("granted/escape")),
        "{log}"
    );
    server.stop();
}
