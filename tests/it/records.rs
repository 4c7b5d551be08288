//! Hand edits of `environments.json` against a real server (issue #10, items 7 and 8):
//! a record that breaks the rules is held back and never touches anything outside the
//! data directory while the rest of the edit applies, and no hand edit is lost to a
//! host write racing it.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, WAIT};

fn records_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(".codebolt/environments.json")
}

/// Writes the file as an editor that saves beside it and renames would.
fn write_renamed(data_dir: &Path, doc: &Value) {
    let tmp = data_dir.join(".codebolt/edit.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    std::fs::rename(tmp, records_path(data_dir)).unwrap();
}

/// Writes the file in place (truncate, then write), as many editors do.
fn write_in_place(data_dir: &Path, doc: &Value) {
    std::fs::write(
        records_path(data_dir),
        serde_json::to_vec_pretty(doc).unwrap(),
    )
    .unwrap();
}

fn entry<'a>(doc: &'a Value, id: &str) -> Option<&'a Value> {
    doc["environments"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == id)
}

async fn wait_health(server: &Server, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, health) = server.call("GET", "/healthz", None).await;
        if pred(&health) {
            return health;
        }
        assert!(Instant::now() < deadline, "health never {what}: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn victim_untouched(victim: &Path) {
    let entries: Vec<String> = std::fs::read_dir(victim)
        .expect("victim dir still there")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["keep.txt".to_owned()], "victim dir changed");
    assert_eq!(
        std::fs::read_to_string(victim.join("keep.txt")).unwrap(),
        "precious"
    );
}

#[tokio::test]
async fn a_hand_added_record_that_escapes_the_data_dir_is_held_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    // `<data>/.codebolt/environments/../../../victim` is `<root>/victim`.
    let victim = root.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep.txt"), "precious").unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let server = Server::start(&data);

    // One edit adds a bad record and a good one, both meant to run.
    let bad = json!({
        "id": "bad-1", "name": "../../../victim", "provider": "local-process",
        "desiredState": "running", "owner": "mallory"
    });
    let doc = json!({"version": 1, "environments": [
        bad.clone(),
        {"id": "good-1", "name": "good-by-hand", "provider": "local-process", "desiredState": "running"}
    ]});
    write_renamed(&data, &doc);
    server
        .wait_env("good-1", "the good record of the edit running", |e| {
            e["status"] == "running" && e["runtime"]["connected"] == true
        })
        .await;
    let health = wait_health(&server, "degraded", |h| h["status"] == "degraded").await;
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("../../../victim") && reasons.contains("bad-1"),
        "{health}"
    );
    let (status, _) = server.call("GET", "/api/v1/environments/bad-1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = server.call("GET", "/api/v1/environments", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // DELETE of a held record is refused; the host never acts on it.
    let (status, err) = server
        .call("DELETE", "/api/v1/environments/bad-1", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "conflict");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("held back") && m.contains("environments.json")),
        "{err}"
    );
    // The file by name, never where the host keeps it.
    assert!(
        !err.to_string().contains(&data.display().to_string()),
        "{err}"
    );
    // Host writes (the good record's start) kept the bad entry exactly as written.
    assert_eq!(entry(&server.records(), "bad-1"), Some(&bad));
    victim_untouched(&victim);
    assert!(
        server.log().contains("held back"),
        "the held record was not logged"
    );

    // A record in force that a hand edit breaks keeps running on its last valid
    // version, and is not deleted through the API either.
    let mut doc = server.records();
    for r in doc["environments"].as_array_mut().unwrap() {
        if r["id"] == "good-1" {
            r["name"] = json!("../../../victim/x");
        }
    }
    write_renamed(&data, &doc);
    wait_health(&server, "naming the broken record", |h| {
        h["reasons"].to_string().contains("good-1")
    })
    .await;
    let (status, env) = server
        .call("GET", "/api/v1/environments/good-1", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env["status"], "running");
    assert_eq!(env["name"], "good-by-hand");
    let (status, _) = server
        .call("DELETE", "/api/v1/environments/good-1", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Fixed by hand: the host is well again and nothing outside was touched.
    let mut doc = server.records();
    let list = doc["environments"].as_array_mut().unwrap();
    list.retain(|r| r["id"] != "bad-1");
    for r in list.iter_mut() {
        r["name"] = json!("good-by-hand");
    }
    write_renamed(&data, &doc);
    wait_health(&server, "ok", |h| h["status"] == "ok").await;
    let (status, _) = server
        .call("DELETE", "/api/v1/environments/good-1", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    victim_untouched(&victim);
    server.stop();
    victim_untouched(&victim);
}

#[tokio::test]
async fn no_hand_edit_is_lost_to_a_racing_host_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let server = Server::start(data);
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "patched", "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let patched = env["id"].as_str().expect("id").to_owned();

    const ROUNDS: usize = 100;
    for round in 0..ROUNDS {
        let mut doc = server.records();
        doc["environments"].as_array_mut().unwrap().push(json!({
            "id": format!("hand-{round}"), "name": format!("hand-{round}"),
            "provider": "local-process"
        }));
        // The host writes 0-50 ms after the edit, inside the watcher's debounce.
        let delay = Duration::from_millis((round as u64 * 37) % 51);
        let edit = tokio::task::spawn_blocking({
            let data = data.to_owned();
            move || {
                if round % 2 == 0 {
                    write_renamed(&data, &doc);
                } else {
                    write_in_place(&data, &doc);
                }
            }
        });
        tokio::time::sleep(delay).await;
        let (status, err) = server
            .call(
                "PATCH",
                &format!("/api/v1/environments/{patched}"),
                Some(json!({"config": {"round": round}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "round {round}: {err}");
        edit.await.unwrap();
    }

    // Every hand-added record is in the file and, once applied, in the API.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, list) = server.call("GET", "/api/v1/environments", None).await;
        let served = list.as_array().map_or(0, |l| {
            l.iter()
                .filter(|e| e["id"].as_str().is_some_and(|id| id.starts_with("hand-")))
                .count()
        });
        if served == ROUNDS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {served} of {ROUNDS} hand-added records are served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let doc = server.records();
    let missing: Vec<usize> = (0..ROUNDS)
        .filter(|i| entry(&doc, &format!("hand-{i}")).is_none())
        .collect();
    assert!(missing.is_empty(), "lost hand edits: {missing:?}");
    assert!(entry(&doc, &patched).is_some());
    server.stop();
}

#[tokio::test]
async fn a_broken_file_racing_a_host_write_is_copied_aside_not_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let server = Server::start(data);
    let (_, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": "patched", "provider": "local-process"})),
        )
        .await;
    let patched = env["id"].as_str().expect("id").to_owned();
    let path = records_path(data);
    for round in 0..5u64 {
        let broken = format!("{{ \"environments\": [ broken {round}");
        std::fs::write(&path, &broken).unwrap();
        tokio::time::sleep(Duration::from_millis(round * 12)).await;
        let (status, _) = server
            .call(
                "PATCH",
                &format!("/api/v1/environments/{patched}"),
                Some(json!({"config": {"round": round}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        // The compaction that carries the patch into the file copies the text first.
        let doc = server.records();
        let copies: Vec<String> = std::fs::read_dir(data.join(".codebolt"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("environments.json.invalid-")
            })
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        assert!(
            copies.contains(&broken),
            "round {round}: the broken text was not kept: {copies:?}"
        );
        // The host's write went on from its last good state.
        assert_eq!(
            entry(&doc, &patched).map(|r| r["config"]["round"].clone()),
            Some(json!(round))
        );
    }
    server.stop();
}
