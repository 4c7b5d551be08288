//! The provider author's loop as an author runs it: `tether provider new`, `provider
//! build`, `provider install` into a running server (through its API and into a data
//! directory), and `provider dev`, which picks up an edit to the crate and has the next
//! start serve the new version with no manual step. And the upload endpoint's refusals.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Server, TOKEN, WAIT, write_config};

const GRANT: &str = "[providers.loopy]\ncommands = [{ program = \"tether\", args = [\"runtime\"] }]\nenv = [\"PATH\"]\nset_env = [\"TETHER_RUNTIME_URL\", \"TETHER_RUNTIME_TOKEN\"]\n";

/// `tether` with `args`, building in a target directory shared across runs.
fn tether(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .args(args)
        .env("CARGO_TARGET_DIR", shared_target())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("TETHER_API_TOKEN");
    command
}

fn shared_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("author-loop-target")
}

fn run(command: &mut Command) -> (String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("running tether");
    let (out, err) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(status.success(), "{out}\n{err}");
    (out, err)
}

#[tokio::test]
async fn new_build_install_and_dev_serve_an_edit_with_no_manual_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crate_dir = dir.path().join("loopy");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    write_config(&data, GRANT);
    let server = Server::start(&data);

    run(tether(&["provider", "new", "loopy", "--path"]).arg(&crate_dir));
    let (out, _) = run(tether(&["provider", "build"]).arg(&crate_dir));
    let built = out
        .lines()
        .find_map(|l| l.strip_prefix("built "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no component path: {out}"));
    assert!(built.is_file(), "{out}");
    assert!(out.contains("provider loopy 0.1.0"), "{out}");
    assert!(
        out.contains("asks for:") && out.contains("runtime"),
        "{out}"
    );

    // Installed through the API of the running server: loaded at once.
    let url = server.base.clone();
    let remote = ["--remote", "--url", url.as_str(), "--token", TOKEN];
    let (out, _) = run(tether(&["provider", "install"]).arg(&built).args(remote));
    assert!(out.contains("installed loopy 0.1.0"), "{out}");
    let (status, loaded) = server.call("GET", "/api/v1/providers/loopy", None).await;
    assert_eq!(status, StatusCode::OK, "{loaded}");
    assert_eq!(loaded["version"], "0.1.0");
    let env = server.running_env("on-loopy", "loopy", json!({})).await;
    let id = env["id"].as_str().expect("id").to_owned();
    assert_eq!(env["providerVersion"], "0.1.0");

    // `dev`: rebuilt, installed and restarted on an edit, with no other step.
    let mut dev = tether(&["provider", "dev"])
        .arg(&crate_dir)
        .args(remote)
        .args(["--restart", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tether provider dev");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = dev.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_line = |what: &str| {
        let deadline = std::time::Instant::now() + WAIT * 4;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => continue,
                Err(_) => panic!("tether provider dev never printed {what:?}"),
            }
        }
    };
    wait_line("watching");
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replacen("version = \"0.1.0\"", "version = \"0.2.0\"", 1),
    )
    .expect("edit");
    let installed = wait_line("installed loopy 0.2.0");
    assert!(installed.contains("after the change"), "{installed}");
    // The restart's outcome, and the environment's own log as it comes: the new
    // build's provider logging its runtime's start.
    let (mut connected, mut logged) = (false, false);
    while !(connected && logged) {
        let line = wait_line("");
        connected |= line.contains("runtime connected, on 0.2.0");
        logged |= line.contains("provider: runtime started");
    }
    let (_, env) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(env["providerVersion"], "0.2.0", "{env}");
    assert_eq!(env["status"], "running", "{env}");
    let _ = dev.kill();
    let _ = dev.wait();

    // Installed into a data directory on this machine: the host's watcher loads it.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).expect("other data dir");
    write_config(&other, GRANT);
    let second = Server::start(&other);
    let (out, _) = run(tether(&["provider", "install"])
        .arg(&built)
        .arg("--data-dir")
        .arg(&other));
    assert!(out.contains("installed loopy 0.2.0"), "{out}");
    assert!(other.join(".codebolt/providers/loopy.wasm").is_file());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, _) = second.call("GET", "/api/v1/providers/loopy", None).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.stop();
    server.stop();
}

#[tokio::test]
async fn the_upload_endpoint_takes_only_a_loading_component_of_that_name_from_an_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let http = reqwest::Client::new();
    let put = |name: &str, token: &str, body: Vec<u8>| {
        http.put(format!("{}/api/v1/providers/{name}", server.base))
            .bearer_auth(token)
            .header("content-type", "application/wasm")
            .body(body)
            .send()
    };
    let component = std::fs::read(crate::support::guests::HANDOFF).expect("handoff.wasm");

    let user = server.user_token("alice").await.0;
    let refused = put("handoff", &user, component.clone()).await.expect("put");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // A refusal is a 400 whose message says why.
    let refused_for = |response: reqwest::Response, why: &'static str| async move {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = response.json().await.expect("json");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{body}");
    };
    let garbage = put("handoff", TOKEN, b"\0asm but not really".to_vec());
    refused_for(garbage.await.expect("put"), "does not load").await;
    let misnamed = put("other-name", TOKEN, component.clone());
    refused_for(misnamed.await.expect("put"), "calls itself").await;
    let bad_name = put("..%2Fescape", TOKEN, component.clone())
        .await
        .expect("put");
    assert_eq!(bad_name.status(), StatusCode::BAD_REQUEST);

    // Nothing was written by the refusals.
    let providers = dir.path().join(".codebolt/providers");
    let written: Vec<_> = std::fs::read_dir(&providers)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");

    let ok = put("handoff", TOKEN, component).await.expect("put");
    assert_eq!(ok.status(), StatusCode::CREATED);
    let view: serde_json::Value = ok.json().await.expect("json");
    assert_eq!(view["name"], "handoff", "{view}");
    assert!(providers.join("handoff.wasm").is_file());
    server.stop();
}

#[tokio::test]
async fn a_user_upload_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let user = server.user_token("mallory").await.0;
    let addr = server.base.trim_start_matches("http://");
    // A component of 60 MB announced, 3 bytes of it sent: the host must not wait for
    // (and hold) the rest of a body it is going to refuse anyway.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /api/v1/providers/evil HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user}\r\n\
         Content-Type: application/wasm\r\nContent-Length: 60000000\r\n\r\n\0as"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(WAIT, stream.read(&mut answer)).await;
    let n = read
        .expect("answered before the body was sent")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("\"missing_scope\""), "{answer}");
    server.stop();
}

#[tokio::test]
async fn an_upload_must_be_sent_as_a_component_and_its_refusal_shows_no_server_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let http = reqwest::Client::new();
    let put = |content_type: Option<&str>, body: Vec<u8>| {
        let mut request = http
            .put(format!("{}/api/v1/providers/handoff", server.base))
            .bearer_auth(TOKEN)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    let component = std::fs::read(crate::support::guests::HANDOFF).expect("handoff.wasm");

    // The bytes of a component sent as a form, as text or as nothing: 415.
    for content_type in [
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        None,
    ] {
        let answer = put(content_type, component.clone()).await.expect("put");
        assert_eq!(
            answer.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        let body: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
        assert!(
            (body["error"]["message"].as_str()).is_some_and(|m| m.contains("application/wasm")),
            "{body}"
        );
    }

    // A refusal says why in words of the upload, never where the host keeps files.
    let data_dir = dir.path().display().to_string();
    for garbage in [b"garbage".to_vec(), Vec::new(), b"\0asm\x01\0\0\0".to_vec()] {
        let answer = put(Some("application/wasm"), garbage).await.expect("put");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let body = answer.text().await.expect("body");
        assert!(body.contains("not a WebAssembly component"), "{body}");
        assert!(!body.contains(&data_dir), "{body}");
        assert!(!body.contains(".codebolt"), "{body}");
    }

    // `application/octet-stream` is taken as well.
    let ok = put(Some("application/octet-stream"), component)
        .await
        .expect("put");
    assert_eq!(ok.status(), StatusCode::CREATED);
    server.stop();
}
