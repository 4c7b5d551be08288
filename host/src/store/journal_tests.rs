//! The journal against a real directory: replay after a crash (a store dropped
//! without compacting is what `kill -9` leaves), a torn last entry, a damaged middle
//! entry, a crash after each compaction step, and a hand edit between compactions.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::compact::Step;
use super::*;

fn record(id: &str, name: &str) -> Record {
    Record::new(id.into(), name.into(), "local-process".into(), Map::new())
}

/// A store that never compacts on its own, so a test decides what the disk holds.
fn quiet(path: &Path) -> Store {
    let store = Store::open(path.to_owned()).unwrap();
    store.shared.trigger.close();
    store
}

fn journal_path(path: &Path) -> PathBuf {
    journal::path_for(path)
}

fn file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids_in(doc: &Value) -> Vec<String> {
    doc["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(store: &Store) -> Vec<String> {
    store.list().into_iter().map(|r| r.id).collect()
}

/// After an open, the file holds everything and the journal nothing.
fn compacted_on_open(path: &Path, expect: &[&str]) {
    assert_eq!(ids_in(&file(path)), expect);
    assert_eq!(std::fs::metadata(journal_path(path)).unwrap().len(), 0);
    assert!(!journal::old_path(&journal_path(path)).exists());
}

#[tokio::test]
async fn acknowledged_mutations_survive_a_crash_before_any_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".codebolt/environments.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let store = quiet(&path);
    for (id, name) in [("a", "alpha"), ("b", "beta"), ("c", "gamma")] {
        store.insert(record(id, name)).await.unwrap();
    }
    store.update("a", |r| r.restarts = 4).await.unwrap();
    store
        .update("b", |r| {
            r.desired_state = DesiredState::Running;
            r.resource_id = Some("res-b".into());
        })
        .await
        .unwrap();
    store.update("b", |r| r.resource_id = None).await.unwrap();
    store.remove("c").await.unwrap();
    assert!(!path.exists(), "nothing compacted yet");
    drop(store);

    let reopened = Store::open(path.clone()).unwrap();
    assert_eq!(ids(&reopened), vec!["a", "b"]);
    assert_eq!(reopened.get("a").unwrap().restarts, 4);
    let b = reopened.get("b").unwrap();
    assert_eq!(b.desired_state, DesiredState::Running);
    assert_eq!(
        b.resource_id, None,
        "a field the host removed stays removed"
    );
    assert!(reopened.journal_damage().is_none());
    compacted_on_open(&path, &["a", "b"]);
    assert_eq!(file(&path)["journalSeq"], 7);
    // Numbering goes on from there.
    reopened.insert(record("d", "delta")).await.unwrap();
    assert!(
        String::from_utf8(std::fs::read(journal_path(&path)).unwrap())
            .unwrap()
            .starts_with("8 ")
    );
}

#[tokio::test]
async fn a_torn_last_entry_is_dropped_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = quiet(&path);
    store.insert(record("a", "alpha")).await.unwrap();
    store.insert(record("b", "beta")).await.unwrap();
    drop(store);
    // The host died half-way through appending a third entry.
    let mut whole = Vec::new();
    journal::encode(
        3,
        &OpRef::Insert {
            record: &record("c", "gamma"),
        },
        &mut whole,
    )
    .unwrap();
    let mut bytes = std::fs::read(journal_path(&path)).unwrap();
    bytes.extend_from_slice(&whole[..whole.len() / 2]);
    std::fs::write(journal_path(&path), &bytes).unwrap();

    let reopened = Store::open(path.clone()).unwrap();
    assert_eq!(ids(&reopened), vec!["a", "b"]);
    assert!(reopened.journal_damage().is_none());
    compacted_on_open(&path, &["a", "b"]);
}

#[tokio::test]
async fn a_damaged_middle_entry_is_reported_with_the_file_and_the_good_entries_apply() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = quiet(&path);
    for (id, name) in [("a", "alpha"), ("b", "beta"), ("c", "gamma")] {
        store.insert(record(id, name)).await.unwrap();
    }
    drop(store);
    let mut bytes = std::fs::read(journal_path(&path)).unwrap();
    let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    // A flipped bit in the middle of the second entry's payload.
    bytes[second + 40] ^= 0x04;
    std::fs::write(journal_path(&path), &bytes).unwrap();

    let reopened = Store::open(path.clone()).unwrap();
    assert_eq!(ids(&reopened), vec!["a", "c"]);
    let damage = reopened.journal_damage().expect("reported");
    assert!(
        damage.contains(&journal_path(&path).display().to_string())
            && damage.contains(&format!("byte {second}")),
        "{damage}"
    );
    // The damaged journal is kept for a person, byte for byte.
    let copies: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.to_string_lossy()
                .contains("environments.journal.damaged-")
        })
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(&copies[0]).unwrap(), bytes);
    compacted_on_open(&path, &["a", "c"]);
}

#[tokio::test]
async fn a_crash_after_each_compaction_step_loses_nothing() {
    for step in [Step::Cut, Step::Write] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("environments.json");
        let store = quiet(&path);
        store.insert(record("a", "alpha")).await.unwrap();
        store.insert(record("b", "beta")).await.unwrap();
        store.update("a", |r| r.restarts = 1).await.unwrap();
        *store.shared.trigger.crash_after.lock().unwrap() = Some(step);
        store.shared.compact().await.unwrap();
        let old = journal::old_path(&journal_path(&path));
        assert!(old.exists(), "{step:?}: the journal was moved aside");
        if step == Step::Write {
            assert_eq!(ids_in(&file(&path)), vec!["a", "b"]);
            assert_eq!(file(&path)["journalSeq"], 3);
        }
        // Appends go on while the compaction is under way.
        store.update("b", |r| r.restarts = 2).await.unwrap();
        store.insert(record("c", "gamma")).await.unwrap();
        store.remove("a").await.unwrap();
        drop(store);

        let reopened = Store::open(path.clone()).unwrap();
        assert_eq!(ids(&reopened), vec!["b", "c"], "{step:?}");
        assert_eq!(reopened.get("b").unwrap().restarts, 2, "{step:?}");
        compacted_on_open(&path, &["b", "c"]);
        assert_eq!(file(&path)["journalSeq"], 6);
    }
}

#[tokio::test]
async fn a_hand_edit_between_compactions_applies_and_keeps_the_journaled_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = quiet(&path);
    for (id, name) in [("a", "alpha"), ("b", "beta"), ("d", "delta")] {
        store.insert(record(id, name)).await.unwrap();
    }
    store.flush().await.unwrap();
    // Journaled, not compacted.
    store.update("a", |r| r.restarts = 5).await.unwrap();
    store
        .update("b", |r| r.last_error = Some("host".into()))
        .await
        .unwrap();
    store.update("d", |r| r.restarts = 1).await.unwrap();

    // Someone edits the file as the host last compacted it: a's config, b's desired
    // state and last error, d removed, e added.
    let mut doc = file(&path);
    let list = doc["environments"].as_array_mut().unwrap();
    list[0]["config"] = json!({"k": "hand"});
    list[1]["desiredState"] = json!("running");
    list[1]["lastError"] = json!("hand");
    list.retain(|r| r["id"] != "d");
    list.push(serde_json::to_value(record("e", "epsilon")).unwrap());
    let tmp = dir.path().join("edit.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();

    let changes = store.reload().await.unwrap().expect("the edit");
    assert_eq!(changes.added, vec!["e".to_owned()]);
    assert_eq!(changes.removed.len(), 1);
    let check = |store: &Store| {
        assert_eq!(ids(store), vec!["a", "b", "e"]);
        let a = store.get("a").unwrap();
        assert_eq!((a.restarts, &a.config["k"]), (5, &json!("hand")));
        let b = store.get("b").unwrap();
        assert_eq!(b.desired_state, DesiredState::Running);
        // Both changed lastError: the host's acknowledged value wins.
        assert_eq!(b.last_error.as_deref(), Some("host"));
    };
    check(&store);

    // A crash now, before any compaction: the replay merges the same way.
    drop(store);
    let reopened = Store::open(path.clone()).unwrap();
    check(&reopened);
    compacted_on_open(&path, &["a", "b", "e"]);
    let written = file(&path);
    assert_eq!(written["environments"][0]["config"]["k"], "hand");
    assert_eq!(written["environments"][0]["restarts"], 5);
}

#[tokio::test]
async fn the_host_own_compactions_are_not_outside_edits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = Store::open(path.clone()).unwrap();
    for i in 0..20 {
        store
            .insert(record(&format!("id{i}"), &format!("n{i}")))
            .await
            .unwrap();
    }
    // The background compaction runs on its own within its pace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() || ids_in(&file(&path)).len() < 20 {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.reload().await.unwrap(), None);
}

#[tokio::test]
async fn a_change_that_changes_nothing_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".codebolt/environments.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let store = quiet(&path);
    store.insert(record("a", "alpha")).await.unwrap();
    store.update("a", |r| r.restarts = 2).await.unwrap();
    let journal = std::fs::metadata(journal_path(&path)).unwrap().len();
    assert!(journal > 0);

    // The same record again (as a merge that keeps this host's record does).
    let before = store.replace_with("a", Record::clone).await.unwrap();
    assert_eq!(before.restarts, 2);
    assert_eq!(
        std::fs::metadata(journal_path(&path)).unwrap().len(),
        journal,
        "an unchanged record added an entry to the journal"
    );
    // An update that sets what is already there (a restart's resource id) neither
    // writes nor moves `updatedAt`.
    let stamped = store.get("a").unwrap().updated_at;
    let same = store.update("a", |r| r.restarts = 2).await.unwrap();
    assert_eq!(same.updated_at, stamped);
    assert_eq!(
        std::fs::metadata(journal_path(&path)).unwrap().len(),
        journal,
        "an update that changed nothing added an entry to the journal"
    );
    // A real change is still written, and survives a crash.
    store
        .replace_with("a", |r| Record {
            restarts: 3,
            ..r.clone()
        })
        .await
        .unwrap();
    assert!(std::fs::metadata(journal_path(&path)).unwrap().len() > journal);
    drop(store);
    assert_eq!(Store::open(path).unwrap().get("a").unwrap().restarts, 3);
}
