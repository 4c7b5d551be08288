//! A deleted environment whose provider failed to remove the resource: the removal is
//! kept in `.codebolt/removals.json`, shown in `/healthz` and `/metrics`, and tried
//! again in the background until the sandbox is gone, also across a `kill -9`; a
//! broken journal is logged and stops neither the host nor its good entries; a
//! removal that hangs holds back no other.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::sandbox::{KEY, Service, grant};
use crate::support::{Server, TOKEN, WAIT, write_config};

async fn healthz(server: &Server) -> Value {
    let (status, health) = server.call("GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    health
}

async fn metrics(server: &Server) -> String {
    let resp = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics");
    resp.text().await.expect("metrics text")
}

/// Waits until the service holds no sandbox and `/healthz` is `ok` again.
async fn wait_removed(server: &Server, service: &Service) -> Value {
    let done =
        |list: &Value, health: &Value| list["sandboxes"] == json!([]) && health["status"] == "ok";
    let list = wait_for(server, service, done, "the removal never finished").await;
    assert_eq!(healthz(server).await["pendingRemovals"], 0);
    list
}

/// Polls the service's list and `/healthz` until `done` says so; the list then.
async fn wait_for(
    server: &Server,
    service: &Service,
    done: impl Fn(&Value, &Value) -> bool,
    what: &str,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = service.list().await;
        let health = healthz(server).await;
        if done(&list, &health) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; {list}; {health}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fake sandbox service failing its first `failing` deletes, a host granted it with
/// `removal_retry_secs` of `retry_secs` (healthy, nothing pending), and a running
/// `http-sandbox` environment `name` on it.
async fn sandboxed(
    dir: &std::path::Path,
    name: &str,
    failing: usize,
    retry_secs: u64,
) -> (Service, Server, Value) {
    let service = Service::start_failing_deletes(dir, failing);
    let config = format!(
        "[lifecycle]\nremoval_retry_secs = {retry_secs}\n{}",
        grant(&service, KEY)
    );
    write_config(dir, &config);
    let server = Server::start(dir);
    assert_eq!(healthz(&server).await["pendingRemovals"], 0);
    let env = server.running_env(name, "http-sandbox", json!({})).await;
    (service, server, env)
}

fn journal(server: &Server) -> Value {
    journal_in(&server.data_dir)
}

/// `.codebolt/removals.json` under the data directory `dir`, parsed.
fn journal_in(dir: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(dir.join(".codebolt/removals.json")).expect("removals.json");
    serde_json::from_str(&text).expect("removals.json parses")
}

async fn delete(server: &Server, id: &str) {
    let (status, body) = server
        .call("DELETE", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

#[tokio::test]
async fn a_failed_removal_is_shown_and_tried_again_until_the_sandbox_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (service, server, env) = sandboxed(dir.path(), "costly", 2, 1).await;
    let id = env["id"].as_str().expect("id").to_owned();

    // The delete answers as before; the sandbox is still there, and the host says so.
    delete(&server, &id).await;
    let health = healthz(&server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["pendingRemovals"], 1, "{health}");
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("still to remove"), "{reasons}");
    assert!(
        metrics(&server).await.contains("tether_removals_pending 1"),
        "the gauge"
    );
    let entry = &journal(&server)["removals"][0];
    assert_eq!(entry["record"]["id"], id.as_str(), "{entry}");
    assert_eq!(entry["record"]["resourceId"], env["resourceId"], "{entry}");
    assert!(
        entry["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("500"),
        "{entry}"
    );
    let (status, _) = server
        .call("GET", &format!("/api/v1/environments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the record is gone at once");

    // Tried again (one more failure, then success): the sandbox goes, health is ok.
    let list = wait_removed(&server, &service).await;
    assert_eq!(list["deleted"], 1, "{list}");
    assert_eq!(journal(&server)["removals"], json!([]));
    assert!(
        metrics(&server).await.contains("tether_removals_pending 0"),
        "the gauge"
    );
    let log = server.log();
    assert!(log.contains("tried again later"), "{log}");
    assert!(
        log.contains("the provider removed the resource of a deleted environment"),
        "{log}"
    );
    assert!(
        !dir.path()
            .join(".codebolt/removal-workspaces")
            .join(&id)
            .exists(),
        "the scratch workspace is gone"
    );
    assert!(!log.contains(KEY), "the API key was logged");
    // The host's own attempts are in the audit log: the failed one, then the one that
    // removed it.
    let retries = retries_audited(&server, &id, 2).await;
    let outcomes: Vec<&str> = retries
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["failed", "ok"], "{retries:?}");
    assert_eq!(retries[0]["actor"], "system", "{retries:?}");
    assert!(
        !format!("{retries:?}").contains(KEY),
        "the API key was audited"
    );
    server.stop();
    service.stop();
}

/// The audit lines of the host's retries of `id`'s removal, once there are `n`.
async fn retries_audited(server: &Server, id: &str, n: usize) -> Vec<Value> {
    audited(server, "environment.removal_retry", id, n).await
}

/// The audit lines of `action` on `id`, once there are `n` (or after [`WAIT`]).
async fn audited(server: &Server, action: &str, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let path = server.data_dir.join(".codebolt/audit.jsonl");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let retries: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["action"] == action && e["target"] == id)
            .collect();
        if retries.len() >= n || Instant::now() >= deadline {
            return retries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_pending_removal_survives_kill_9_and_the_restarted_host_finishes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first host waits an hour before trying again: the restart is what does it.
    let (service, server, env) = sandboxed(dir.path(), "crashy", 1, 3600).await;
    let id = env["id"].as_str().expect("id").to_owned();
    server.stop_env(&id).await;
    delete(&server, &id).await;
    assert_eq!(healthz(&server).await["pendingRemovals"], 1);
    assert_eq!(
        service.list().await["sandboxes"].as_array().map(Vec::len),
        Some(1)
    );
    server.kill();

    let server = Server::start(dir.path());
    let list = wait_removed(&server, &service).await;
    assert_eq!(list["deleted"], 1, "{list}");
    server.stop();
    service.stop();
}

#[tokio::test]
async fn a_broken_removals_journal_is_logged_and_its_good_entries_still_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start(dir.path(), 0);
    write_config(dir.path(), &grant(&service, KEY));
    let sandbox = service.new_sandbox().await;
    // A second sandbox, the resource of an environment the records hold: an entry
    // naming it (or that environment) must never reach the provider.
    let in_use = service.new_sandbox().await;
    let record = journal_record;
    let entry = |record: Value, error: &str| {
        let mut entry = journal_entry(record, error);
        entry["attempts"] = json!(3);
        entry["nextAttemptAt"] = json!("2099-01-01T00:00:00Z");
        entry
    };
    let good = entry(record("good1", "good", &sandbox), "HTTP 500");
    let live = record("live1", "live", &in_use);
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("dir");
    let records = json!({"environments": [live.clone()]});
    std::fs::write(codebolt.join("environments.json"), records.to_string()).expect("write");
    let doc = json!({"version": 1, "removals": [
        entry(live, "x"),
        entry(record("sneaky1", "sneaky", &in_use), "x"),
        entry(record("bad1", "../../etc", "sbx-x"), "x"),
        entry(record("bad2", "huge", "sbx-y"), &"e".repeat(1 << 20)),
        entry(record("bad3", "big", &"r".repeat(1 << 16)), "x"),
        "not an entry",
        good,
    ]});
    std::fs::write(codebolt.join("removals.json"), doc.to_string()).expect("write");

    let mut server = Server::start(dir.path());
    // The service keeps one sandbox (the one in use) and nothing is pending.
    let done = |list: &Value, health: &Value| {
        list["sandboxes"].as_array().map(Vec::len) == Some(1) && health["pendingRemovals"] == 0
    };
    let list = wait_for(&server, &service, done, "the good entry was never removed").await;
    assert_eq!(list["deleted"], 1, "{list}");
    assert_eq!(list["sandboxes"][0]["id"], in_use.as_str(), "{list}");
    assert!(
        server.log().contains("still in use"),
        "the entries naming a live environment or its resource are dropped"
    );
    let health = healthz(&server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["pendingRemovals"], 0, "{health}");
    assert!(
        health["reasons"]
            .to_string()
            .contains("removals journal: 4 entries skipped"),
        "{health}"
    );
    assert!(
        server
            .log()
            .contains("removals journal: an entry is skipped")
    );
    assert!(server.running());
    let kept = std::fs::read_dir(&codebolt)
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| (e.file_name().to_string_lossy()).starts_with("removals.json.rejected-"));
    assert!(kept, "the original text is kept beside the journal");
    assert!(!dir.path().join(".codebolt/environments/etc").exists());
    server.stop();

    // Not JSON at all: logged, the host serves, and nothing is retried.
    std::fs::write(codebolt.join("removals.json"), "{not json").expect("write");
    let mut server = Server::start(dir.path());
    let health = healthz(&server).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"].to_string().contains("removals journal"),
        "{health}"
    );
    assert!(server.running());
    server.stop();
    service.stop();
}

#[tokio::test]
async fn a_removal_that_hangs_holds_back_no_other_and_is_tried_once_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two deleted environments whose sandboxes a host failed to remove: all due at start.
    let (service, server) = hanging(dir.path(), &["first1", "second1"]).await;
    // Whichever delete reaches the service first hangs; the other is done all the same.
    let one_left = |list: &Value, health: &Value| {
        list["deleted"] == 1
            && list["sandboxes"].as_array().is_some_and(|s| s.len() == 1)
            && health["pendingRemovals"] == 1
    };
    wait_for(
        &server,
        &service,
        one_left,
        "a hanging removal held back the other",
    )
    .await;
    // Done while the hanging attempt still waits (the provider's request gives up after
    // 15 s), not after it failed.
    let log = server.log();
    assert!(!log.contains("could not remove the resource"), "{log}");
    // Due every second, the hanging entry is still in its one attempt two looks later
    // (well inside the provider's 15 s), not in a second one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = server.log().matches("trying again to remove").count();
    assert_eq!(attempts, 2, "{}", server.log());
    assert_eq!(healthz(&server).await["pendingRemovals"], 1);
    // Shutdown abandons the attempt in flight and keeps its entry.
    server.stop();
    let left = journal_in(dir.path());
    assert_eq!(left["removals"].as_array().map(Vec::len), Some(1), "{left}");
    service.stop();
}

/// Writes a removals journal (as a host leaves it) of deleted environments `ids`, each
/// with a new sandbox of `service` still to remove.
async fn journal_sandboxes(dir: &std::path::Path, service: &Service, ids: &[&str]) {
    let mut entries = Vec::new();
    for id in ids {
        let record = journal_record(id, id, &service.new_sandbox().await);
        entries.push(journal_entry(record, "HTTP 500"));
    }
    let codebolt = dir.join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("dir");
    let doc = json!({"version": 1, "removals": entries});
    std::fs::write(codebolt.join("removals.json"), doc.to_string()).expect("write");
}

/// `GET /api/v1/removals` as the admin.
async fn removals(server: &Server) -> Vec<Value> {
    let (status, list) = server.call("GET", "/api/v1/removals", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array().expect("a list").clone()
}

#[tokio::test]
async fn admins_list_pending_removals_have_one_tried_now_and_drop_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every delete fails, and the host would wait an hour between attempts.
    let (service, server, env) = sandboxed(dir.path(), "kept", 1000, 3600).await;
    let id = env["id"].as_str().expect("id").to_owned();
    delete(&server, &id).await;

    // Admins only.
    let (user, _) = server.user_token("alice").await;
    let paths = [
        ("GET", "/api/v1/removals".to_owned()),
        ("POST", format!("/api/v1/removals/{id}/retry")),
        ("DELETE", format!("/api/v1/removals/{id}")),
    ];
    for (method, path) in &paths {
        let (status, body) = server.call_with(method, path, None, Some(&user)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "missing_scope", "{body}");
        let (status, _) = server.call_with(method, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }

    // Listed with what it failed on.
    let list = removals(&server).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    assert_eq!(entry["environmentId"], id.as_str(), "{entry}");
    assert_eq!(entry["name"], "kept", "{entry}");
    assert_eq!(entry["provider"], "http-sandbox", "{entry}");
    assert_eq!(entry["owner"], "admin", "{entry}");
    assert_eq!(entry["resourceId"], env["resourceId"], "{entry}");
    assert_eq!(entry["attempts"], 1, "{entry}");
    assert_eq!(entry["inFlight"], false, "{entry}");
    assert!(
        entry["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{entry}"
    );
    assert!(
        entry["failedAt"].is_string() && entry["nextAttemptAt"].is_string(),
        "{entry}"
    );
    assert!(
        !entry.to_string().contains(KEY),
        "the API key is shown: {entry}"
    );

    // Tried now, not in an hour (and failing again).
    let (status, view) = server
        .call("POST", &format!("/api/v1/removals/{id}/retry"), None)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["environmentId"], id.as_str(), "{view}");
    // Due now, not in the hour the backoff had set.
    let at = |v: &Value| {
        let text = v["nextAttemptAt"].as_str().expect("nextAttemptAt");
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
    };
    assert!(
        at(&view) < at(entry) - time::Duration::minutes(30),
        "{view} {entry}"
    );
    until_removals(&server, "never tried again", |list| {
        list.first().is_some_and(|e| e["attempts"] == 2)
    })
    .await;

    // Dropped: the host stops trying, says all is well, and the sandbox stays.
    let (status, dropped) = server
        .call("DELETE", &format!("/api/v1/removals/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{dropped}");
    assert_eq!(dropped["attempts"], 2, "{dropped}");
    assert_eq!(removals(&server).await, Vec::<Value>::new());
    let health = healthz(&server).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["pendingRemovals"], 0, "{health}");
    assert_eq!(journal(&server)["removals"], json!([]));
    let list = service.list().await;
    assert_eq!(
        list["sandboxes"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    for (method, path) in &paths[1..] {
        let (status, body) = server.call(method, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    let asked = audited(&server, "environment.removal_retry_now", &id, 3).await;
    let outcomes: Vec<&str> = asked.iter().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["refused", "ok", "refused"], "{asked:?}");
    let dropped = audited(&server, "environment.removal_drop", &id, 3).await;
    let outcomes: Vec<&str> = dropped
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["refused", "ok", "refused"], "{dropped:?}");
    assert_eq!(dropped[1]["actor"]["user"], "admin", "{dropped:?}");

    // For good: a restarted host has nothing to retry.
    server.stop();
    let server = Server::start(dir.path());
    assert_eq!(removals(&server).await, Vec::<Value>::new());
    server.stop();
    service.stop();
}

#[tokio::test]
async fn a_removal_dropped_while_its_attempt_runs_is_not_kept_when_that_attempt_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (service, server) = hanging(dir.path(), &["hung1"]).await;
    until_removals(&server, "never in flight", |list| {
        list.first().is_some_and(|e| e["inFlight"] == true)
    })
    .await;
    let (status, dropped) = server.call("DELETE", "/api/v1/removals/hung1", None).await;
    assert_eq!(status, StatusCode::OK, "{dropped}");
    assert_eq!(dropped["inFlight"], true, "{dropped}");
    // The service goes away: the hanging delete fails, and the entry stays dropped.
    service.stop();
    until_removals(&server, "the attempt never ended", |_| {
        server.log().contains("its entry was dropped meanwhile")
    })
    .await;
    assert_eq!(removals(&server).await, Vec::<Value>::new());
    assert_eq!(healthz(&server).await["pendingRemovals"], 0);
    assert_eq!(journal(&server)["removals"], json!([]));
    server.stop();
}

/// `tether removals ARGS` against `server` as the admin: exit code and stdout.
fn removals_cli(server: &Server, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("removals")
        .args(args)
        .args(["--url", &server.base, "--token", TOKEN])
        .env_remove("TETHER_API_TOKEN")
        .env_remove("TETHER_URL")
        .output()
        .expect("tether removals");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[tokio::test]
async fn the_cli_lists_retries_and_drops_pending_removals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (service, server, env) = sandboxed(dir.path(), "by-cli", 1000, 3600).await;
    let id = env["id"].as_str().expect("id").to_owned();
    delete(&server, &id).await;

    let (code, out, err) = removals_cli(&server, &["list"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let list: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(list[0]["environmentId"], id.as_str(), "{list}");
    let (code, out, err) = removals_cli(&server, &["retry", &id]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (code, out, err) = removals_cli(&server, &["drop", &id]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let dropped: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(dropped["environmentId"], id.as_str(), "{dropped}");
    // Gone: not found is exit code 3; an id that is no id is refused before any call.
    let (code, _, err) = removals_cli(&server, &["drop", &id]);
    assert_eq!(code, Some(3), "{err}");
    let (code, _, err) = removals_cli(&server, &["retry", "../etc"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("environment id"), "{err}");
    server.stop();
    service.stop();
}

/// A sandbox service leaving its first delete unanswered, a host that would wait ten
/// minutes for it, and a journal of deleted environments `ids` (due at start).
async fn hanging(dir: &std::path::Path, ids: &[&str]) -> (Service, Server) {
    let service = Service::start_hanging_deletes(dir, 1);
    let config = format!(
        "[lifecycle]\nremoval_retry_secs = 1\nstop_timeout_secs = 600\n{}",
        grant(&service, KEY)
    );
    write_config(dir, &config);
    journal_sandboxes(dir, &service, ids).await;
    (service, Server::start(dir))
}

/// Polls `GET /api/v1/removals` until `done` says so.
async fn until_removals(server: &Server, what: &str, done: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(&removals(server).await) {
        assert!(Instant::now() < deadline, "{what}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deleted `http-sandbox` environment's record as the journal keeps it.
fn journal_record(id: &str, name: &str, resource: &str) -> Value {
    json!({"id": id, "name": name, "provider": "http-sandbox", "owner": "admin",
           "resourceId": resource, "createdAt": "2026-01-01T00:00:00Z",
           "updatedAt": "2026-01-01T00:00:00Z"})
}

/// A journal entry of `record` after one failed attempt, due at once.
fn journal_entry(record: Value, error: &str) -> Value {
    json!({"record": record, "attempts": 1, "lastError": error,
           "failedAt": "2026-01-01T00:00:00Z", "nextAttemptAt": "2026-01-01T00:00:00Z"})
}

/// A `removals.json` made huge (here a sparse 256 MiB file) or replaced by a named
/// pipe: the host read a huge one whole before refusing it and wrote it out again
/// as its kept copy (256 MiB of memory, then of disk, for a file taking none), and
/// waited at start for a pipe's writer. Now neither is read: each is moved aside
/// whole, said in the log and `/healthz`, and the host starts.
#[tokio::test]
async fn a_huge_or_piped_removals_journal_is_moved_aside_unread() {
    use std::os::unix::fs::MetadataExt;
    for piped in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let codebolt = dir.path().join(".codebolt");
        std::fs::create_dir_all(&codebolt).expect("mkdir");
        let path = codebolt.join("removals.json");
        if piped {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        } else {
            let file = std::fs::File::create(&path).expect("create");
            file.set_len(256 << 20).expect("set_len");
        }
        let server = Server::start(dir.path());
        let moved: Vec<_> = std::fs::read_dir(&codebolt)
            .expect("read_dir")
            .filter_map(Result::ok)
            .filter(|e| (e.file_name().to_string_lossy()).starts_with("removals.json.rejected-"))
            .collect();
        assert_eq!(moved.len(), 1, "piped {piped}: {moved:?}");
        let meta = std::fs::symlink_metadata(moved[0].path()).expect("meta");
        let fifo = std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type());
        assert_eq!(fifo, piped, "{meta:?}");
        // Moved, not copied: the sparse file still takes (almost) no disk.
        assert!(meta.blocks() < 2048, "{} blocks", meta.blocks());
        assert!(!path.exists(), "still in place");
        let health = healthz(&server).await;
        let said = if piped {
            "it is a named pipe, not a regular file"
        } else {
            "larger than the limit"
        };
        assert!(health.to_string().contains(said), "{health}");
        server.stop();
    }
}

/// A pending removal's `lastError` quoting what the operator's config hands the
/// provider (here the sandbox API's URL, in the refusal of the host's own attempt at
/// start) reads `<config:KEY>` there too, as an environment's does.
#[tokio::test]
async fn a_pending_removal_shows_no_operator_config_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api_url = "http://127.0.0.1:9/v1";
    write_config(
        dir.path(),
        &format!(
            "[providers.http-sandbox]\nconfig = {{ apiUrl = \"{api_url}\", apiKey = \"{KEY}\" }}\n"
        ),
    );
    let record = journal_record("env-quoted", "quoted", "sb-1");
    let entry = journal_entry(record, "HTTP 500");
    let codebolt = dir.path().join(".codebolt");
    std::fs::create_dir_all(&codebolt).expect("dir");
    let doc = json!({"version": 1, "removals": [entry]});
    std::fs::write(codebolt.join("removals.json"), doc.to_string()).expect("write");
    let server = Server::start(dir.path());
    until_removals(&server, "the attempt at start failed", |list| {
        list.iter().any(|r| r["attempts"].as_u64() >= Some(2))
    })
    .await;
    let listed = removals(&server).await;
    let error = listed[0]["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("DELETE <config:apiUrl>/sandboxes/sb-1"),
        "{error}"
    );
    assert!(!error.contains(api_url), "{error}");
    server.stop();
}

/// A template connect right after its key's environment was deleted makes the new
/// environment under the same derived name, so the same workspace directory, while
/// the delete is still removing the old one's resource and then that directory:
/// with `local-process` the new environment's start failed (`spawning tether: No
/// such file or directory`), its workspace emptied under it. A new environment of a
/// name whose delete is under way now waits for that delete to finish.
#[tokio::test]
async fn a_template_connect_waits_for_the_delete_of_its_keys_previous_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::start_hanging_deletes(dir.path(), 1);
    let config = format!(
        "[lifecycle]\nremoval_retry_secs = 600\nstop_timeout_secs = 3\n{}\
         [templates.box]\nprovider = \"http-sandbox\"\nscope = \"thread\"\n",
        grant(&service, KEY)
    );
    write_config(dir.path(), &config);
    let server = Server::start(dir.path());
    let url = server.ws_url("/ws/app?template=box&thread=t1");
    let provisioned = |mut ws: crate::support::Ws| async move {
        let first = ws.next_any().await;
        assert_eq!(first["type"], "provisioned", "{first}");
        (ws, first["environmentId"].as_str().expect("id").to_owned())
    };
    let ws = crate::support::Ws::connect(&url, Some(TOKEN))
        .await
        .expect("provisioned");
    let (ws, old) = provisioned(ws).await;
    server
        .wait_env(&old, "running", |e| e["status"] == "running")
        .await;
    drop(ws);

    // The delete's removal of the sandbox hangs (until `stop_timeout_secs`), its
    // record gone at once; the key's next connect comes meanwhile.
    let path = format!("/api/v1/environments/{old}");
    let delete = server.call("DELETE", &path, None);
    let connect = async {
        let deadline = Instant::now() + WAIT;
        while server.call("GET", &path, None).await.0 != StatusCode::NOT_FOUND {
            assert!(Instant::now() < deadline, "{}", server.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ws = crate::support::Ws::connect(&url, Some(TOKEN))
            .await
            .expect("provisioned again");
        // Admitted only once the old environment's delete was done: its failed
        // removal is already kept for a retry.
        let pending = removals(&server).await;
        let ids: Vec<&str> = (pending.iter())
            .filter_map(|r| r["environmentId"].as_str())
            .collect();
        assert_eq!(ids, [old.as_str()], "{pending:?}");
        provisioned(ws).await
    };
    let ((status, body), (_ws, new)) = tokio::join!(delete, connect);
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_ne!(new, old);
    server
        .wait_env(&new, "running", |e| e["status"] == "running")
        .await;
    server.stop();
    service.stop();
}
