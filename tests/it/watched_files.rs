//! Files a running host watches, touched by other processes: `tether.toml` and the
//! records file read by a backup or an operator's `cat` (no reload follows).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use notify::Watcher;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, WAIT, write_config};

/// Counts the opens of `file` by anyone (the host included) while it lives.
struct Opens {
    count: Arc<AtomicUsize>,
    _watcher: notify::RecommendedWatcher,
}

impl Opens {
    fn of(file: &Path) -> Opens {
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        let name = file.file_name().expect("a file name").to_owned();
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            let Ok(e) = e else { return };
            let open = matches!(
                e.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            );
            if open && e.paths.iter().any(|p| p.file_name() == Some(&name)) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .expect("a watcher");
        let dir = file.parent().expect("a directory");
        (watcher.watch(dir, notify::RecursiveMode::NonRecursive)).expect("watching");
        Opens {
            count,
            _watcher: watcher,
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Polls `GET /api/v1/config/status` until `done` holds for it; the status then.
async fn status_when(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, body) = server.call("GET", "/api/v1/config/status", None).await;
        if done(&body) {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status once the host has reloaded (or failed to reload) at least once.
async fn reloaded(server: &Server) -> Value {
    status_when(server, "never reloaded", |b| !b["lastReload"].is_null()).await
}

/// Reading `tether.toml` or the records file is no change: the host's own read of
/// either used to count as one, so a single `cat` set off a reload every 300 ms (and
/// a re-read of the records file every 200 ms) for as long as the host ran.
#[tokio::test]
async fn reading_a_watched_file_reloads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "[limits]\nmemory_mib = 128\n");
    let server = Server::start(dir.path());
    let body = json!({"name": "read", "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let records = dir.path().join(".codebolt/environments.json");
    // Written (compacted from the journal) a little after the create.
    let deadline = std::time::Instant::now() + WAIT;
    while !records.is_file() {
        assert!(std::time::Instant::now() < deadline, "no records file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The host re-reads the records file after its own write: let that pass.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let config_opens = Opens::of(&dir.path().join("tether.toml"));
    let record_opens = Opens::of(&records);
    std::fs::read(dir.path().join("tether.toml")).expect("reading tether.toml");
    std::fs::read(&records).expect("reading the records file");
    // Several debounce times of either watcher.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (status, body) = server.call("GET", "/api/v1/config/status", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["lastReload"].is_null(), "a read reloaded: {body}");
    // Ours, and at most one late read of the host's own write.
    assert_eq!(config_opens.count(), 1, "tether.toml was read again");
    assert!(
        record_opens.count() <= 2,
        "the records file was read {} times",
        record_opens.count()
    );
    server.stop();
}

/// `tether.toml` rewritten in place by a slow writer (`generate > tether.toml`: the
/// shell truncates it, the generator writes later) is read once the writer closes
/// it: the empty or half-written file in between used to be put in force after
/// 300 ms of quiet, dropping every grant and template until the rest arrived.
#[tokio::test]
async fn a_file_still_being_written_is_not_put_in_force() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let template = "[templates.t]\nprovider = \"local-process\"\nscope = \"user\"\n";
    write_config(
        dir.path(),
        &format!("[limits]\nmemory_mib = 128\n{template}"),
    );
    let server = Server::start(dir.path());
    let mut file = std::fs::File::create(dir.path().join("tether.toml")).expect("truncating");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    file.write_all(b"[limits]\nmemory_mib = 256\n")
        .expect("writing half");
    file.flush().expect("flush");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = server.call("GET", "/api/v1/config/status", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["lastReload"].is_null(),
        "a file still being written was read: {body}"
    );
    let (status, templates) = server.call("GET", "/api/v1/templates", None).await;
    assert_eq!(status, StatusCode::OK, "{templates}");
    assert!(templates.to_string().contains("\"t\""), "{templates}");

    file.write_all(template.as_bytes())
        .expect("writing the rest");
    drop(file);
    let body = reloaded(&server).await;
    assert_eq!(body["lastReload"]["outcome"], "applied", "{body}");
    assert_eq!(
        body["lastReload"]["changed"],
        json!(["limits.memory_mib"]),
        "{body}"
    );
    server.stop();
}

/// A `tether.toml` edited into a syntax or type error never has its values quoted:
/// the TOML crate's message showed the offending line (an `apiKey` in it) in the log,
/// `GET /api/v1/config/status` and the unauthenticated `/healthz`. The error keeps
/// the line and column.
#[tokio::test]
async fn a_broken_tether_toml_is_reported_without_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[providers.http-sandbox]\nconfig = { apiKey = \"sk-GOOD\" }\n";
    write_config(dir.path(), good);
    let server = Server::start(dir.path());
    let broken = [
        "[providers.http-sandbox]\nconfig = { apiKey = \"sk-SECRET-1\", model = m1 }\n",
        "[providers.http-sandbox]\nconfig = \"sk-SECRET-2\"\n",
        "[templates.t]\nprovider = \"local-process\"\nscope = \"sk-SECRET-3\"\n",
    ];
    let mut last = json!(null);
    for (i, text) in broken.iter().enumerate() {
        let tmp = dir.path().join("tether.toml.new");
        std::fs::write(&tmp, text).expect("writing");
        std::fs::rename(&tmp, dir.path().join("tether.toml")).expect("renaming");
        let secret = format!("SECRET-{}", i + 1);
        let status =
            status_when(&server, "never reloaded", |b| b["lastReload"]["at"] != last).await;
        last = status["lastReload"]["at"].clone();
        assert_eq!(status["lastReload"]["outcome"], "failed", "{status}");
        // The admin's `/healthz`, which has the reasons.
        let (_, health) = server.call("GET", "/healthz", None).await;
        assert_eq!(health["status"], "degraded", "{health}");
        for shown in [status.to_string(), health.to_string(), server.log()] {
            assert!(!shown.contains(&secret), "{secret} shown: {shown}");
            assert!(!shown.contains("sk-GOOD"), "a value shown: {shown}");
        }
        assert!(
            health.to_string().contains("line 2") || health.to_string().contains("line 3"),
            "{health}"
        );
    }
    server.stop();
}

/// `tether.toml` replaced by a named pipe (some secret tools serve files as pipes):
/// the reload's open waited for a writer on one of the runtime's threads, and the
/// whole host stopped answering, `/healthz` included. It is refused now, like any
/// other invalid edit.
#[tokio::test]
async fn a_named_pipe_in_place_of_tether_toml_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "[limits]\nmemory_mib = 128\n");
    let server = Server::start(dir.path());
    let pipe = dir.path().join("pipe");
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    std::fs::rename(&pipe, dir.path().join("tether.toml")).expect("renaming");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        let call = server.call("GET", "/api/v1/config/status", None);
        let (_, body) = tokio::time::timeout(WAIT, call)
            .await
            .expect("the host stopped answering");
        if !body["lastReload"].is_null() {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["lastReload"]["outcome"], "failed", "{status}");
    let error = status["lastReload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("it is a named pipe, not a regular file"),
        "{status}"
    );
    let health = tokio::time::timeout(WAIT, server.call_with("GET", "/healthz", None, None));
    let (_, health) = health.await.expect("the host stopped answering");
    assert_eq!(health["status"], "degraded", "{health}");
    server.stop();
}

/// The records file replaced by a named pipe: its reload (and every compaction after
/// it) waited for a writer forever, holding a thread, saying nothing. Now the read
/// fails at once, saying what the file is, and the host goes on.
#[tokio::test]
async fn a_named_pipe_in_place_of_the_records_file_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let records = dir.path().join(".codebolt/environments.json");
    let body = json!({"name": "first", "provider": "local-process"});
    let (status, env) = server
        .call("POST", "/api/v1/environments", Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    let pipe = dir.path().join("pipe");
    nix::unistd::mkfifo(&pipe, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    std::fs::rename(&pipe, &records).expect("renaming");
    let deadline = std::time::Instant::now() + WAIT;
    while !server
        .log()
        .contains("it is a named pipe, not a regular file")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the pipe was never refused:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"name": "second", "provider": "local-process"});
    let call = server.call("POST", "/api/v1/environments", Some(body));
    let (status, env) = tokio::time::timeout(WAIT, call)
        .await
        .expect("the host stopped answering");
    assert_eq!(status, StatusCode::CREATED, "{env}");
    server.stop();
}

/// A provider's state directory (`/state`) is its own: it used to be made with the
/// umask's mode (0755), so any local user could list and read what a provider kept
/// there. Both `.codebolt/provider-state` and the provider's directory are 0700.
#[tokio::test]
async fn a_provider_s_state_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server
        .running_env("stateful", "local-process", json!({}))
        .await;
    let root = dir.path().join(".codebolt/provider-state");
    for path in [root.clone(), root.join("local-process")] {
        let mode = std::fs::metadata(&path)
            .expect("the state directory")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{}: {mode:o}", path.display());
    }
    server.stop();
}

/// `tether.toml` from a Kubernetes ConfigMap: the file is a symlink through `..data`,
/// and an update swaps `..data` to a new directory, leaving `tether.toml` itself
/// untouched. The host used to see no change (only `SIGHUP` reloaded it).
#[tokio::test]
async fn a_config_map_update_is_reloaded() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("..2026_01_01_v1");
    std::fs::create_dir(&first).expect("mkdir");
    std::fs::write(first.join("tether.toml"), "[limits]\nmemory_mib = 128\n").expect("write");
    symlink("..2026_01_01_v1", dir.path().join("..data")).expect("..data");
    symlink("..data/tether.toml", dir.path().join("tether.toml")).expect("tether.toml");
    let server = Server::start(dir.path());
    // The watch may start just after the host listens.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let second = dir.path().join("..2026_01_01_v2");
    std::fs::create_dir(&second).expect("mkdir");
    std::fs::write(second.join("tether.toml"), "[limits]\nmemory_mib = 256\n").expect("write");
    symlink("..2026_01_01_v2", dir.path().join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).expect("swap");

    let status = reloaded(&server).await;
    assert_eq!(status["lastReload"]["outcome"], "applied", "{status}");
    assert_eq!(
        status["lastReload"]["changed"],
        json!(["limits.memory_mib"]),
        "{status}"
    );
    server.stop();
}

/// A `tether.toml` every user may write grants whoever writes it anything: an edit
/// made while it is so is refused like any invalid one, and the last good
/// configuration stays in force.
#[tokio::test]
async fn an_edit_of_a_tether_toml_every_user_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "[limits]\nmemory_mib = 128\n");
    let server = Server::start(dir.path());
    let path = dir.path().join("tether.toml");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::write(&path, "[limits]\nmemory_mib = 256\n").unwrap();
    let status = reloaded(&server).await;
    assert_eq!(status["lastReload"]["outcome"], "failed", "{status}");
    let error = status["lastReload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("every user may write it (mode 0666)"),
        "{status}"
    );
    // Made private again, the same text is taken.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    status_when(&server, "never applied", |b| {
        b["lastReload"]["outcome"] == "applied"
    })
    .await;
    server.stop();
}
