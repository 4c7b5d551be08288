//! The records journal against a real server (issue 16, item 3): `kill -9` in the
//! middle of bursts of concurrent creates, patches and deletes loses no acknowledged
//! mutation, and a hand edit of `environments.json` landing between two compactions
//! applies while the journaled mutations are kept.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, TOKEN, WAIT, create_until_refused, delete_all, patch_until_refused};

/// Concurrent writers patching, one environment each.
const PATCHERS: usize = 24;
/// Concurrent writers creating environments.
const CREATORS: usize = 8;

fn records_path(data: &Path) -> std::path::PathBuf {
    data.join(".codebolt/environments.json")
}

fn by_id(doc: &Value) -> HashMap<String, Value> {
    doc["environments"]
        .as_array()
        .expect("environments")
        .iter()
        .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r.clone())))
        .collect()
}

async fn create(server: &Server, name: &str) -> String {
    let (status, env) = server
        .call(
            "POST",
            "/api/v1/environments",
            Some(json!({"name": name, "provider": "local-process"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{env}");
    env["id"].as_str().expect("id").to_owned()
}

/// What the API acknowledged before the host was killed.
#[derive(Default)]
struct Acked {
    /// Per patched environment, the last `n` acknowledged.
    patched: HashMap<String, u64>,
    created: HashSet<String>,
    deleted: HashSet<String>,
}

#[tokio::test]
async fn kill_9_during_bursts_of_concurrent_mutations_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let mut server = Server::start(data);
    let mut targets = Vec::new();
    for i in 0..PATCHERS {
        targets.push(create(&server, &format!("patched-{i}")).await);
    }
    let mut acked = Acked::default();
    let client = reqwest::Client::new();
    for round in 0..5u64 {
        let acks = Arc::new(AtomicUsize::new(0));
        let mut patchers = tokio::task::JoinSet::new();
        for (w, id) in targets.iter().enumerate() {
            let (client, base, acks, id) = (
                client.clone(),
                server.base.clone(),
                acks.clone(),
                id.clone(),
            );
            // Each writer patches its own environment with a rising `n`; the last
            // acknowledged one must survive.
            let from = round * 1_000_000 + w as u64 * 1_000;
            patchers.spawn(patch_until_refused(client, base, id, from, acks));
        }
        let mut creators = tokio::task::JoinSet::new();
        for c in 0..CREATORS {
            let (client, base) = (client.clone(), server.base.clone());
            creators.spawn(create_until_refused(client, base, format!("r{round}-c{c}")));
        }
        // Deletes of environments created in earlier rounds, alongside.
        let doomed: Vec<String> = acked.created.iter().take(6).cloned().collect();
        let deleter = {
            let (client, base) = (client.clone(), server.base.clone());
            tokio::spawn(async move { delete_all(&client, &base, doomed).await.0 })
        };
        // Kill mid-burst, later in each round.
        let deadline = Instant::now() + WAIT;
        while acks.load(Ordering::SeqCst) < 50 + 150 * round as usize {
            assert!(
                Instant::now() < deadline,
                "round {round}: the burst stalled"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill();
        // The file the crash left parses (the journal holds what it lacks).
        if let Ok(text) = std::fs::read_to_string(records_path(data)) {
            serde_json::from_str::<Value>(&text)
                .unwrap_or_else(|e| panic!("round {round}: the file does not parse: {e}"));
        }
        while let Some(done) = patchers.join_next().await {
            let (id, last) = done.expect("patcher");
            if let Some(n) = last {
                acked.patched.insert(id, n);
            }
        }
        while let Some(done) = creators.join_next().await {
            acked.created.extend(done.expect("creator"));
        }
        for id in deleter.await.expect("deleter") {
            acked.created.remove(&id);
            acked.deleted.insert(id);
        }

        server = Server::start(data);
        let on_disk = by_id(&server.records());
        for (id, n) in &acked.patched {
            let kept = on_disk.get(id).and_then(|r| r["config"]["n"].as_u64());
            // The patch in flight at the kill may have been made durable unacknowledged.
            assert!(
                kept.is_some_and(|k| k == *n || k == *n + 1),
                "round {round}: {id} was acknowledged at n={n}, the file has {kept:?}"
            );
            let (_, env) = server
                .call("GET", &format!("/api/v1/environments/{id}"), None)
                .await;
            assert_eq!(env["config"]["n"].as_u64(), kept, "round {round}: {id}");
        }
        let lost: Vec<_> = acked
            .created
            .iter()
            .filter(|id| !on_disk.contains_key(*id))
            .collect();
        assert!(lost.is_empty(), "round {round}: created and lost: {lost:?}");
        let back: Vec<_> = acked
            .deleted
            .iter()
            .filter(|id| on_disk.contains_key(*id))
            .collect();
        assert!(back.is_empty(), "round {round}: deleted and back: {back:?}");
    }
    assert!(acked.created.len() > CREATORS, "the bursts created little");
    assert!(!acked.deleted.is_empty(), "nothing was deleted");
    server.stop();
}

#[tokio::test]
async fn a_hand_edit_between_compactions_applies_and_the_journaled_mutations_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let server = Server::start(data);
    let busy = create(&server, "busy").await;
    let edited = create(&server, "edited").await;
    let doomed = create(&server, "doomed").await;
    server.records();

    // The host keeps journaling patches of `busy` while the file is edited by hand.
    let stop = Arc::new(AtomicBool::new(false));
    let patcher = {
        let (client, base, busy, stop) = (
            reqwest::Client::new(),
            server.base.clone(),
            busy.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut last = 0;
            for n in 1.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let resp = client
                    .patch(format!("{base}/api/v1/environments/{busy}"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"config": {"n": n}}))
                    .send()
                    .await
                    .expect("patch");
                assert_eq!(resp.status(), StatusCode::OK);
                last = n;
            }
            last
        })
    };
    let journal = data.join(".codebolt/environments.journal");
    let mut between = 0;
    const EDITS: u64 = 10;
    for i in 0..EDITS {
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Edit what the file holds now, as a person would: one record changed, one
        // added, and (once) one removed; then save beside it and rename.
        let mut doc: Value =
            serde_json::from_slice(&std::fs::read(records_path(data)).expect("file"))
                .expect("the file parses");
        let list = doc["environments"].as_array_mut().expect("list");
        for r in list.iter_mut() {
            if r["id"] == edited.as_str() {
                r["config"] = json!({"hand": i});
            }
        }
        if i == 3 {
            list.retain(|r| r["id"] != doomed.as_str());
        }
        list.push(json!({"id": format!("hand-{i}"), "name": format!("hand-{i}"), "provider": "local-process"}));
        let tmp = data.join(".codebolt/edit.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        if std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) {
            between += 1;
        }
        std::fs::rename(&tmp, records_path(data)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let last = patcher.await.expect("patcher");
    assert!(between > 0, "no edit landed while the journal held entries");

    let check = |doc: &Value, when: &str| {
        let on_disk = by_id(doc);
        for i in 0..EDITS {
            assert!(
                on_disk.contains_key(&format!("hand-{i}")),
                "{when}: hand-{i} lost"
            );
        }
        assert_eq!(on_disk[&edited]["config"]["hand"], EDITS - 1, "{when}");
        assert_eq!(on_disk[&busy]["config"]["n"], last, "{when}: a patch lost");
        assert!(
            !on_disk.contains_key(&doomed),
            "{when}: the hand's removal lost"
        );
    };
    // The API serves the merge once the last edit is read.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, list) = server.call("GET", "/api/v1/environments", None).await;
        let served: usize = list.as_array().map_or(0, |l| {
            l.iter()
                .filter(|e| e["id"].as_str().is_some_and(|id| id.starts_with("hand-")))
                .count()
        });
        if served == EDITS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {served} hand records served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(&server.records(), "after compaction");
    // And again after a crash and a replay.
    server.kill();
    let server = Server::start(data);
    check(&server.records(), "after kill -9");
    let (_, env) = server
        .call("GET", &format!("/api/v1/environments/{busy}"), None)
        .await;
    assert_eq!(env["config"]["n"], last);
    server.stop();
}
