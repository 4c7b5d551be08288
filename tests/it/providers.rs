//! Drop-in providers: a `.wasm` in `.codebolt/providers/` is loaded at start (a
//! drop-in with a built-in's name wins where the operator named it) and while the host runs — added, replaced and
//! removed without a restart; a corrupt or half-written one is reported, not fatal;
//! and a restart with unchanged providers compiles nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::guests::{HANDOFF, LOCAL_PROCESS};
use crate::support::{Server, WAIT, write_config};

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
    // A built-in is replaced only by the file the operator names.
    write_config(
        dir.path(),
        "[providers.local-process]\nreplace_builtin = { file = \"local-process.wasm\" }\n",
    );
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

#[tokio::test]
async fn a_symlink_loop_among_the_drop_ins_is_reported_alone() {
    // `loop.wasm -> loop.wasm` cannot be followed (ELOOP); the drop-in beside it
    // still loads, and the loop is named in /healthz.
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::os::unix::fs::symlink("loop.wasm", providers.join("loop.wasm")).unwrap();
    std::fs::copy(HANDOFF, providers.join("handoff.wasm")).unwrap();
    let server = Server::start(dir.path());
    let (status, p) = server.call("GET", "/api/v1/providers/handoff", None).await;
    assert_eq!(status, StatusCode::OK, "{p}\nlog:\n{}", server.log());
    let health = wait_get(&server, "/healthz", "loop.wasm reported", |_, h| {
        health_names(h, "loop.wasm")
    })
    .await;
    assert_eq!(health["status"], "degraded");

    // Files dropped in later are seen too; removing the loop clears the reason.
    std::fs::copy(LOCAL_PROCESS, providers.join("other.wasm")).unwrap();
    wait_get(&server, "/healthz", "other.wasm reported", |_, h| {
        health_names(h, "other.wasm")
    })
    .await;
    std::fs::remove_file(providers.join("other.wasm")).unwrap();
    std::fs::remove_file(providers.join("loop.wasm")).unwrap();
    wait_get(&server, "/healthz", "health ok", |_, h| h["status"] == "ok").await;
    server.stop();
}

#[tokio::test]
async fn a_huge_drop_in_is_refused_unread() {
    // A sparse 1 GiB file costs no disk; read whole, it would cost the host 1 GiB of
    // memory (and a larger one more than the machine has).
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    let huge = std::fs::File::create(providers.join("huge.wasm")).unwrap();
    huge.set_len(1 << 30).unwrap();
    drop(huge);
    std::fs::copy(HANDOFF, providers.join("handoff.wasm")).unwrap();
    let server = Server::start(dir.path());
    let reason = load_failure(&server, "huge.wasm").await;
    assert!(
        reason.contains("has 1073741824 bytes; a provider component is at most 67108864"),
        "{reason}"
    );
    let (status, _) = server.call("GET", "/api/v1/providers/handoff", None).await;
    assert_eq!(status, StatusCode::OK);
    server.stop();
}

/// A drop-in every user may write (or another user's) runs whatever they put there with
/// the grants the operator gave its name: it is refused and named in `/healthz`, and
/// loads once it is the host user's alone.
#[tokio::test]
async fn a_drop_in_every_user_may_write_is_refused_until_made_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).unwrap();
    let file = providers.join("handoff.wasm");
    std::fs::copy(HANDOFF, &file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let server = Server::start(dir.path());
    let health = wait_get(&server, "/healthz", "handoff.wasm reported", |_, h| {
        health_names(h, "handoff.wasm")
    })
    .await;
    assert!(
        health
            .to_string()
            .contains("every user may write it (mode 0666)"),
        "{health}"
    );
    let (status, _) = server.call("GET", "/api/v1/providers/handoff", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_get(
        &server,
        "/api/v1/providers/handoff",
        "handoff loaded",
        |s, _| s == StatusCode::OK,
    )
    .await;
    server.stop();
}

/// Polls `GET path` until `pred` holds for its status and body, returning the body.
async fn wait_get(
    server: &Server,
    path: &str,
    what: &str,
    pred: impl Fn(StatusCode, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = server.call("GET", path, None).await;
        if pred(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never happened; last: {status} {body}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `/healthz` names `file` among its reasons.
fn health_names(health: &Value, file: &str) -> bool {
    health["reasons"].as_array().is_some_and(|r| {
        r.iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains(file)))
    })
}

#[tokio::test]
async fn a_corrupt_or_half_written_file_dropped_in_at_runtime_is_reported_and_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let providers = dir.path().join(".codebolt/providers");
    let steady = server
        .running_env("steady", "local-process", json!({}))
        .await;
    let steady_id = steady["id"].as_str().expect("id");

    std::fs::write(
        providers.join("broken.wasm"),
        b"\0asm\x0d\0\x01\0 not a component",
    )
    .expect("write");
    let health = wait_get(&server, "/healthz", "broken.wasm reported", |_, h| {
        health_names(h, "broken.wasm")
    })
    .await;
    assert_eq!(health["status"], "degraded");

    // The first half of a component, as a copy in progress leaves it: reported ...
    let bytes = std::fs::read(HANDOFF).expect("handoff.wasm");
    let file = providers.join("handoff.wasm");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("write");
    wait_get(&server, "/healthz", "the half file reported", |_, h| {
        health_names(h, "handoff.wasm")
    })
    .await;
    let (status, err) = server.call("GET", "/api/v1/providers/handoff", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("handoff.wasm failed to load"), "{message}");

    // ... and loaded once the copy completes, its failure cleared.
    std::fs::write(&file, &bytes).expect("write");
    wait_get(
        &server,
        "/api/v1/providers/handoff",
        "handoff loaded",
        |s, _| s == StatusCode::OK,
    )
    .await;
    let (_, health) = server.call("GET", "/healthz", None).await;
    assert!(!health_names(&health, "handoff.wasm"), "{health}");
    server.handoff_env("handed").await;

    // Removing the broken file clears the last reason.
    std::fs::remove_file(providers.join("broken.wasm")).expect("remove");
    wait_get(&server, "/healthz", "health ok", |_, h| h["status"] == "ok").await;

    // Nothing else was disturbed.
    let (_, env) = server
        .call("GET", &format!("/api/v1/environments/{steady_id}"), None)
        .await;
    assert_eq!(env["status"], "running", "{env}");
    assert_eq!(env["runtime"]["connected"], true, "{env}");
    let (status, _) = server
        .call("GET", "/api/v1/providers/local-process", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop();
}

/// Scaffolds a provider with `tether provider new` and builds it as an author would,
/// in a target dir shared across runs; returns the crate dir and the built component.
fn scaffold(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let crate_dir = root.join(name);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["provider", "new", name, "--path"])
        .arg(&crate_dir)
        .output()
        .expect("tether provider new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target");
    let built = target
        .join("wasm32-wasip2/debug")
        .join(format!("{}.wasm", name.replace('-', "_")));
    build(&crate_dir, &target);
    (crate_dir, built)
}

fn build(crate_dir: &Path, target: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = std::process::Command::new(cargo)
        .args(["build", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo build of the scaffold");
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
}

/// `tether provider new` writes a crate that builds for wasm32-wasip2 as it is; dropped
/// into a running host it serves environments, a rebuilt version serves new starts
/// while the old environment keeps its instance, and removing it leaves the records
/// with a clear status.
#[tokio::test]
async fn a_scaffolded_provider_is_dropped_in_replaced_and_removed_while_the_host_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (crate_dir, built) = scaffold(dir.path(), "scaffolded");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    crate::support::write_config(
        &data,
        "[providers.scaffolded]\ncommands = [{ program = \"tether\", args = [\"runtime\"] }]\nenv = [\"PATH\"]\nset_env = [\"TETHER_RUNTIME_URL\", \"TETHER_RUNTIME_TOKEN\"]\n",
    );
    let server = Server::start(&data);
    let (status, _) = server
        .call("GET", "/api/v1/providers/scaffolded", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Dropped in while the host runs: usable without a restart.
    let file = data.join(".codebolt/providers/scaffolded.wasm");
    std::fs::copy(&built, &file).expect("drop in");
    let v1 = wait_get(
        &server,
        "/api/v1/providers/scaffolded",
        "v1 loaded",
        |s, _| s == StatusCode::OK,
    )
    .await;
    assert_eq!(v1["version"], "0.1.0");
    let old = server.running_env("on-v1", "scaffolded", json!({})).await;
    let old_id = old["id"].as_str().expect("id").to_owned();
    assert_eq!(old["providerVersion"], "0.1.0");
    assert_eq!(old["providerSha256"], v1["sha256"]);
    assert_eq!(old["providerStatus"]["state"], "current", "{old}");
    let mut app = server.app(&old_id, "t").await;
    let echo = app
        .request(json!({"type": "echo", "requestId": "1", "payload": "hi"}))
        .await;
    assert_eq!(echo["payload"], "hi");
    // The scaffold's own message type is answered by the provider, not the runtime.
    let info = app
        .request(json!({"type": "workspaceInfo", "requestId": "i1"}))
        .await;
    assert_eq!(info["type"], "remoteProviderEvent", "{info}");
    assert_eq!(info["action"], "workspaceInfoResponse", "{info}");
    assert_eq!(info["message"]["version"], "0.1.0", "{info}");
    assert!(info["message"]["runtimePid"].is_u64(), "{info}");

    // A rebuilt 0.2.0, which also declares a type 0.1.0 does not, replaces the file:
    // compiled, then in force for new starts.
    let manifest = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text.replacen("version = \"0.1.0\"", "version = \"0.2.0\"", 1),
    )
    .expect("bump version");
    let lib = crate_dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).expect("lib.rs");
    let declared = "vec![\"workspaceInfo\".to_owned()]";
    assert!(
        text.contains(declared),
        "the scaffold declares workspaceInfo"
    );
    let both = "vec![\"workspaceInfo\".to_owned(), \"onlyInV2\".to_owned()]";
    std::fs::write(&lib, text.replacen(declared, both, 1)).expect("declare onlyInV2");
    build(
        &crate_dir,
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-target"),
    );
    std::fs::copy(&built, &file).expect("replace");
    let v2 = wait_get(
        &server,
        "/api/v1/providers/scaffolded",
        "v2 loaded",
        |_, p| p["version"] == "0.2.0",
    )
    .await;
    assert_ne!(v2["sha256"], v1["sha256"]);
    let new = server.running_env("on-v2", "scaffolded", json!({})).await;
    let new_id = new["id"].as_str().expect("id").to_owned();
    assert_eq!(new["providerVersion"], "0.2.0");
    assert_eq!(new["providerSha256"], v2["sha256"]);

    // The old environment keeps its 0.1.0 instance, and says a newer one is loaded.
    let (_, old) = server
        .call("GET", &format!("/api/v1/environments/{old_id}"), None)
        .await;
    assert_eq!(old["status"], "running", "{old}");
    assert_eq!(old["providerVersion"], "0.1.0");
    assert_eq!(old["providerSha256"], v1["sha256"]);
    assert_eq!(old["providerStatus"]["state"], "replaced", "{old}");
    assert_eq!(old["providerStatus"]["loaded"]["version"], "0.2.0");
    // Its provider instance still answers (a provider-handled request, not the runtime).
    let wrote = app
        .request(json!({"type": "providerWriteFile", "requestId": "w", "path": "a.txt", "content": "still here"}))
        .await;
    assert_eq!(wrote["message"]["success"], true, "{wrote}");
    // A type only 0.2.0 declares goes where the running 0.1.0 instance says, even for
    // an app that connects after 0.2.0 was loaded: to the runtime, which answers it
    // once (it knows no such type); on 0.2.0, to the provider.
    let mut late = server.app(&old_id, "t2").await;
    let old_answer = late
        .request(json!({"type": "onlyInV2", "requestId": "o1"}))
        .await;
    assert_eq!(old_answer["type"], "error", "{old_answer}");
    let said = old_answer["error"].as_str().unwrap_or_default();
    assert!(
        said.contains("unknown message type: onlyInV2"),
        "{old_answer}"
    );
    let mut new_app = server.app(&new_id, "t").await;
    let new_answer = new_app
        .request(json!({"type": "onlyInV2", "requestId": "o2"}))
        .await;
    assert_eq!(new_answer["type"], "remoteProviderEvent", "{new_answer}");
    assert_eq!(new_answer["error"]["code"], "unsupported", "{new_answer}");
    drop((late, new_app));

    // Removed: the provider is gone, the records stay, each with a clear status.
    std::fs::remove_file(&file).expect("remove");
    wait_get(
        &server,
        "/api/v1/providers/scaffolded",
        "unloaded",
        |s, _| s == StatusCode::NOT_FOUND,
    )
    .await;
    let (_, old) = server
        .call("GET", &format!("/api/v1/environments/{old_id}"), None)
        .await;
    assert_eq!(old["status"], "running", "{old}");
    assert_eq!(old["providerStatus"]["state"], "notLoaded", "{old}");
    let message = old["providerStatus"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("no longer loaded"), "{message}");

    let stop = format!("/api/v1/environments/{new_id}/stop");
    server.call("POST", &stop, None).await;
    server
        .wait_env(&new_id, "stopped", |e| e["status"] == "stopped")
        .await;
    let start = format!("/api/v1/environments/{new_id}/start");
    server.call("POST", &start, None).await;
    let failed = server
        .wait_env(&new_id, "failed to start", |e| e["status"] == "error")
        .await;
    let last = failed["lastError"].as_str().unwrap_or_default();
    assert!(last.contains("\"scaffolded\" is not loaded"), "{last}");
    assert_eq!(failed["providerStatus"]["state"], "notLoaded");
    let (_, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    server.stop();
}

/// Compiled artifacts in the cache, with their size, modification time and content:
/// files named by their key alone, which leaves out the `.stats` usage files beside
/// them and the cache's own lock and temporary files.
fn cache_entries(cache: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime, Vec<u8>)> {
    let mut entries = BTreeMap::new();
    let mut dirs = vec![cache.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("cache dir").flatten() {
            let path = entry.path();
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dirs.push(path);
            } else if path.extension().is_none()
                && !entry.file_name().to_string_lossy().starts_with('.')
            {
                let content = std::fs::read(&path).expect("cache entry");
                let modified = meta.modified().expect("mtime");
                entries.insert(path, (meta.len(), modified, content));
            }
        }
    }
    entries
}

#[tokio::test]
async fn a_restart_with_unchanged_providers_compiles_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::copy(HANDOFF, providers.join("handoff.wasm")).expect("drop in");
    let cache = dir.path().join(".codebolt/cache");

    let server = Server::start(dir.path());
    let (_, loaded) = server.call("GET", "/api/v1/providers", None).await;
    let count = loaded.as_array().map(Vec::len).unwrap_or_default() as u64;
    assert!(count >= 2, "built-ins and handoff: {loaded}");
    assert_eq!(
        server.metric("tether_compile_cache_misses_total").await,
        count
    );
    assert_eq!(server.metric("tether_compile_cache_hits_total").await, 0);
    server.stop();
    let before = cache_entries(&cache);
    assert_eq!(before.len() as u64, count, "one entry per component");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache)
            .expect("cache")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "private to the operator");
    }

    // Same providers, new process: every component comes from the cache.
    let server = Server::start(dir.path());
    assert_eq!(server.metric("tether_compile_cache_misses_total").await, 0);
    assert_eq!(
        server.metric("tether_compile_cache_hits_total").await,
        count
    );
    let (_, again) = server.call("GET", "/api/v1/providers", None).await;
    assert_eq!(again, loaded, "the same providers, the same hashes");
    server.handoff_env("from-cache").await;
    server.stop();
    assert_eq!(cache_entries(&cache), before, "no entry added or rewritten");
}

/// An app's `providerAgentStart` has one answer, the provider's; the runtime hears of
/// it as an `agentStart` notice, and what it says back carries no `requestId` of the app's.
#[tokio::test]
async fn an_agent_start_is_answered_once_and_reaches_the_runtime_as_a_notice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let env = server
        .running_env("agent", "local-process", json!({}))
        .await;
    let id = env["id"].as_str().expect("id");
    let mut app = server.app(id, "t").await;
    app.send(json!({"type": "providerAgentStart", "requestId": "a1", "agent": "x"}))
        .await;
    app.send(json!({"type": "echo", "requestId": "e1", "payload": 1}))
        .await;
    let mut seen = Vec::new();
    let done = |seen: &[Value]| {
        let has = |pred: &dyn Fn(&Value) -> bool| seen.iter().any(pred);
        has(&|f| f["requestId"] == "a1")
            && has(&|f| f["type"] == "agentStarted")
            && has(&|f| f["requestId"] == "e1")
    };
    while !done(&seen) {
        seen.push(app.next().await);
    }
    // One more round trip, so anything else the runtime had to say has arrived.
    let last = app
        .request(json!({"type": "echo", "requestId": "e2", "payload": 2}))
        .await;
    assert_eq!(last["type"], "echoResponse");
    let answers: Vec<&Value> = seen.iter().filter(|f| f["requestId"] == "a1").collect();
    assert_eq!(answers.len(), 1, "{seen:?}");
    assert_eq!(answers[0]["type"], "remoteProviderEvent", "{seen:?}");
    assert_eq!(answers[0]["message"]["accepted"], true, "{seen:?}");
    let notice = seen.iter().find(|f| f["type"] == "agentStarted");
    assert_eq!(
        notice.map(|n| n["threadId"].clone()),
        Some(json!("t")),
        "{seen:?}"
    );
    server.stop();
}

/// Descriptors process `pid` holds open on `dir` or anything under it.
fn open_under(pid: u32, dir: &Path) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|to| to.starts_with(dir))
        .collect()
}

#[tokio::test]
async fn a_running_environment_whose_provider_is_idle_holds_no_directory_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().canonicalize().unwrap();
    let server = Server::start_with_handoff(&data, "");
    let (id, url, token) = server.handoff_env("idle-files").await;
    let _runtime = crate::support::Ws::connect(&url, Some(&token))
        .await
        .expect("runtime connects");
    server
        .wait_env(&id, "runtime connected", |e| {
            e["runtime"]["connected"] == true
        })
        .await;
    // The provider wrote runtime.json in its workspace and let go of the directory:
    // neither the workspace nor the provider's state directory stays open.
    let workspace = data.join(".codebolt/environments/idle-files");
    assert!(workspace.join("runtime.json").is_file());
    let state = data.join(".codebolt/provider-state");
    assert_eq!(open_under(server.pid(), &workspace), Vec::<PathBuf>::new());
    assert_eq!(open_under(server.pid(), &state), Vec::<PathBuf>::new());
    // A restart opens and closes them again, and writes the new credentials.
    let (status, _) = server
        .call("POST", &format!("/api/v1/environments/{id}/restart"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let deadline = Instant::now() + WAIT;
    while server.handoff_runtime("idle-files").1 == token {
        assert!(Instant::now() < deadline, "restart wrote no new token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_under(server.pid(), &workspace), Vec::<PathBuf>::new());
    server.stop();
}

/// `limits.share_memory_images`: on, running instances map their provider's initial
/// memory image from one memfd (the host's mappings show it, once per instance); off,
/// each copies it (no such mapping). Either way the environments run.
#[tokio::test]
async fn instances_share_or_copy_the_memory_image_as_the_operator_says() {
    for share in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("[limits]\nshare_memory_images = {share}\n");
        let server = Server::start_with_handoff(dir.path(), &config);
        server.handoff_env("image-a").await;
        server.handoff_env("image-b").await;
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
        let images = maps
            .lines()
            .filter(|l| l.contains("wasm-memory-image"))
            .count();
        if share {
            assert!(images >= 2, "shared: {images} image mappings\n{maps}");
        } else {
            assert_eq!(images, 0, "copied: no image mapping\n{maps}");
        }
    }
}

/// A component of one core function: `depth` nested loops around code that reads and
/// writes each of `locals` locals. Tiny (tens of kilobytes), but every loop needs every
/// local as a block parameter: Cranelift takes gigabytes and minutes over it.
fn costly_to_compile(depth: usize, locals: u32) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    fn section(id: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    let mut body = Vec::new();
    body.push(1); // one run of locals: `locals` i32s
    leb(u64::from(locals), &mut body);
    body.push(0x7f);
    body.extend(std::iter::repeat_n([0x03, 0x40], depth).flatten()); // loop
    for i in 0..locals {
        // local.get i; local.get j; i32.add; local.set i
        body.push(0x20);
        leb(u64::from(i), &mut body);
        body.push(0x20);
        leb(u64::from((i * 7 + 1) % locals), &mut body);
        body.push(0x6a);
        body.push(0x21);
        leb(u64::from(i), &mut body);
    }
    // local.get 0; br_if 0; end
    body.extend(std::iter::repeat_n([0x20, 0x00, 0x0d, 0x00, 0x0b], depth).flatten());
    body.push(0x0b);
    let mut code = vec![1];
    leb(body.len() as u64, &mut code);
    code.extend(body);
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module); // type: [] -> []
    section(3, &[1, 0], &mut module); // one function of that type
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component); // a core module
    component
}

/// The reason `/healthz` gives for the drop-in `file`, once it gives one.
async fn load_failure(server: &Server, file: &str) -> String {
    let health = wait_get(server, "/healthz", &format!("{file} reported"), |_, h| {
        health_names(h, file)
    })
    .await;
    (health["reasons"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .find(|r| r.contains(file))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_drop_in_that_is_costly_to_compile_is_stopped_at_the_compile_limits() {
    // Compiled in the host, the 31 KB component below grew the process past 1.3 GB
    // in two minutes, still compiling (the host compiled before any instance limit
    // applied). Now a child compiles it first, within `[limits] compile_mib` and
    // `compile_secs`, and the host compiles only what fitted.
    let dir = tempfile::tempdir().expect("tempdir");
    let providers = dir.path().join(".codebolt/providers");
    std::fs::create_dir_all(&providers).expect("providers dir");
    std::fs::write(providers.join("costly.wasm"), costly_to_compile(300, 3000)).expect("write");
    std::fs::copy(HANDOFF, providers.join("handoff.wasm")).expect("drop in");
    write_config(
        dir.path(),
        "[limits]\ncompile_mib = 256\ncompile_secs = 60\n",
    );
    let server = Server::start(dir.path());
    let reason = load_failure(&server, "costly.wasm").await;
    assert!(
        reason.contains("compiling it needed more than 256 MiB of memory ([limits] compile_mib)"),
        "{reason}"
    );
    // What fits is compiled apart too, and served as ever.
    let (status, _) = server.call("GET", "/api/v1/providers/handoff", None).await;
    assert_eq!(status, StatusCode::OK);
    server.handoff_env("beside-it").await;
    // An upload is compiled apart as well.
    let uploaded = reqwest::Client::new()
        .put(format!("{}/api/v1/providers/costly", server.base))
        .bearer_auth(crate::support::TOKEN)
        .header("content-type", "application/wasm")
        .body(costly_to_compile(300, 3001))
        .send()
        .await
        .expect("put");
    assert_eq!(uploaded.status(), StatusCode::BAD_REQUEST);
    let body: Value = uploaded.json().await.expect("json");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("more than 256 MiB of memory"), "{body}");
    let peak_mib = crate::hostile::bounds::status_kib(server.pid(), "VmHWM:") >> 10;
    assert!(peak_mib < 200, "the host's peak RSS was {peak_mib} MiB");

    // Time: with memory to spare, the child is stopped at `compile_secs`.
    write_config(
        dir.path(),
        "[limits]\ncompile_mib = 4096\ncompile_secs = 2\n",
    );
    wait_get(&server, "/api/v1/config/status", "the reload", |_, s| {
        s["lastReload"]["outcome"] == "applied"
    })
    .await;
    std::fs::write(providers.join("slow.wasm"), costly_to_compile(301, 3000)).expect("write");
    let reason = load_failure(&server, "slow.wasm").await;
    assert!(
        reason.contains("compiling it took longer than 2 s ([limits] compile_secs)"),
        "{reason}"
    );
    // No compiler of this host's is left behind (other tests' hosts compile too).
    let parent = server.pid().to_string();
    let compilers = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            Some((cmdline, stat))
        })
        .filter(|(cmdline, stat)| {
            // `PID (COMMAND) STATE PPID ...`; the command may hold spaces.
            let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
            after.split(' ').nth(1) == Some(parent.as_str())
                && cmdline.windows(16).any(|w| w == b"__tether-compile")
        })
        .count();
    assert_eq!(compilers, 0, "compilers left running");
    server.stop();

    // A restart with the file still there and the limits no higher does not spend the
    // budget on it again.
    let server = Server::start(dir.path());
    let reason = load_failure(&server, "slow.wasm").await;
    assert!(
        reason.contains("longer than 2 s ([limits] compile_secs) when it was tried before"),
        "{reason}"
    );
    server.stop();
}
