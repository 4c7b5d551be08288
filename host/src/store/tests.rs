//! The store against a real directory: durability, group commit, outside edits and
//! broken files. Tests that read the file flush first: mutations reach it through
//! the journal's compaction.

use super::*;
use serde_json::{Map, Value};

fn record(id: &str, name: &str) -> Record {
    Record::new(id.into(), name.into(), "local-process".into(), Map::new())
}

#[tokio::test]
async fn insert_update_remove_round_trip_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".codebolt/environments.json");
    let store = Store::open(path.clone()).unwrap();
    store.insert(record("a", "alpha")).await.unwrap();
    store.insert(record("b", "beta")).await.unwrap();
    assert!(matches!(
        store.insert(record("c", "alpha")).await,
        Err(StoreError::NameTaken(_))
    ));
    store
        .update("a", |r| r.desired_state = DesiredState::Running)
        .await
        .unwrap();
    store.remove("b").await.unwrap();
    store.flush().await.unwrap();

    let reopened = Store::open(path.clone()).unwrap();
    let list = reopened.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].desired_state, DesiredState::Running);
    // No temp files are left beside it (the journal is, empty).
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "environments.json")
        .filter(|e| e.file_name() != "environments.journal" || e.metadata().unwrap().len() > 0)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn unknown_fields_survive_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let text = serde_json::json!({
        "version": 1,
        "owner": "ops-team",
        "environments": [{
            "id": "a", "name": "alpha", "provider": "local-process",
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
            "description": "kept", "labels": {"team": "x"}
        }]
    });
    std::fs::write(&path, serde_json::to_vec(&text).unwrap()).unwrap();
    let store = Store::open(path.clone()).unwrap();
    store.update("a", |r| r.restarts = 3).await.unwrap();
    store.flush().await.unwrap();
    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(after["owner"], "ops-team");
    assert_eq!(after["environments"][0]["description"], "kept");
    assert_eq!(after["environments"][0]["labels"]["team"], "x");
    assert_eq!(after["environments"][0]["restarts"], 3);
}

#[tokio::test]
async fn invalid_files_are_reported_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    for (text, needle) in [
        ("{not json", "key must be a string"),
        (r#"{"environments": {"a": 1}}"#, "invalid type"),
    ] {
        std::fs::write(&path, text).unwrap();
        let store = Store::open(path.clone()).unwrap();
        let err = store.invalid().expect("reported invalid");
        assert!(err.contains(needle), "{err}");
        assert!(store.list().is_empty());
    }
}

#[tokio::test]
async fn bad_records_are_held_back_verbatim_and_the_rest_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let text = serde_json::json!({"environments": [
        {"id": "a", "name": "../../../victim", "provider": "local-process", "note": "kept"},
        {"id": "b"},
        {"id": "c", "name": "x", "provider": "p", "desiredState": "runnin"},
        "not a record",
        {"id": "d", "name": "good", "provider": "local-process"},
        {"id": "e", "name": "good", "provider": "local-process"},
        {"id": "f", "name": "f", "provider": "p", "lastError": "e".repeat(validate::MAX_LAST_ERROR_BYTES + 1)},
    ]});
    std::fs::write(&path, serde_json::to_vec(&text).unwrap()).unwrap();
    let store = Store::open(path.clone()).unwrap();
    assert!(store.invalid().is_none());
    let ids: Vec<String> = store.list().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, vec!["d".to_owned()]);
    let held = store.held();
    assert_eq!(held.len(), 6, "{held:?}");
    for (line, needle) in held.iter().zip([
        "invalid environment name \"../../../victim\"",
        "missing field `name`",
        "unknown variant `runnin`",
        "must be a JSON object",
        "another record has name \"good\"",
        "lastError is",
    ]) {
        assert!(line.contains(needle), "{line}");
    }
    assert!(matches!(store.remove("a").await, Err(StoreError::Held(_))));
    assert!(matches!(
        store.insert(record("z", "../../../victim")).await,
        Err(StoreError::NameTaken(_))
    ));
    // A host write keeps every held entry exactly as written.
    store.update("d", |r| r.restarts = 1).await.unwrap();
    store.flush().await.unwrap();
    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let entries = after["environments"].as_array().unwrap();
    assert_eq!(entries[0], text["environments"][0]);
    assert_eq!(entries[3], "not a record");
    assert_eq!(entries[5], text["environments"][5]);
    assert_eq!(entries[4]["restarts"], 1);
}

#[tokio::test]
async fn a_host_write_merges_an_outside_edit_it_has_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = Store::open(path.clone()).unwrap();
    store.insert(record("a", "alpha")).await.unwrap();
    store.insert(record("b", "beta")).await.unwrap();
    store.flush().await.unwrap();

    // An editor adds one record, removes another and annotates the file...
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["owner"] = "ops".into();
    let list = doc["environments"].as_array_mut().unwrap();
    list.retain(|r| r["id"] != "b");
    list.push(serde_json::to_value(record("c", "gamma")).unwrap());
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    // ...and the host compacts before it has reloaded.
    store.update("a", |r| r.restarts = 7).await.unwrap();
    store.flush().await.unwrap();

    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ids: Vec<&str> = after["environments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["a", "c"]);
    assert_eq!(after["environments"][0]["restarts"], 7);
    assert_eq!(after["owner"], "ops");
    // The next reload hands the merged edit over once.
    let changes = store.reload().await.unwrap().expect("the merged edit");
    assert_eq!(changes.added, vec!["c".to_owned()]);
    assert_eq!(changes.removed.len(), 1);
    assert_eq!(changes.removed[0].id, "b");
    assert_eq!(store.reload().await.unwrap(), None);
}

#[tokio::test]
async fn a_record_broken_by_hand_keeps_its_last_valid_version_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = Store::open(path.clone()).unwrap();
    store.insert(record("a", "alpha")).await.unwrap();
    store.flush().await.unwrap();
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["environments"][0]["name"] = "../x".into();
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(store.reload().await.unwrap(), None, "nothing to apply");
    assert_eq!(store.get("a").unwrap().name, "alpha");
    assert!(store.held_reason("a").is_some());
    // Host changes to it stay in memory; the file keeps the hand's text.
    store.update("a", |r| r.restarts = 2).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.get("a").unwrap().restarts, 2);
    let after: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(after["environments"][0], doc["environments"][0]);
}

#[tokio::test]
async fn an_invalid_file_is_copied_aside_before_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    std::fs::write(&path, "{broken").unwrap();
    let store = Store::open(path.clone()).unwrap();
    store.insert(record("a", "alpha")).await.unwrap();
    store.flush().await.unwrap();
    let copies: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("environments.json.invalid-")
        })
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(
        std::fs::read_to_string(copies[0].path()).unwrap(),
        "{broken"
    );
    assert!(store.invalid().is_none());
    assert_eq!(Store::open(path).unwrap().list().len(), 1);
}

#[tokio::test]
async fn reload_reports_outside_edits_and_ignores_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = Store::open(path.clone()).unwrap();
    store.insert(record("a", "alpha")).await.unwrap();
    store.insert(record("b", "beta")).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.reload().await.unwrap(), None, "own write echoed back");

    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let list = doc["environments"].as_array_mut().unwrap();
    list.retain(|r| r["id"] != "b");
    list[0]["desiredState"] = "running".into();
    let mut c = serde_json::to_value(record("c", "gamma")).unwrap();
    c["note"] = "hand-added".into();
    list.push(c);
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();

    let changes = store.reload().await.unwrap().expect("changes");
    assert_eq!(changes.added, vec!["c".to_owned()]);
    assert_eq!(changes.changed.len(), 1);
    assert_eq!(
        changes.changed[0].desired_state,
        DesiredState::Stopped,
        "the old record"
    );
    assert_eq!(changes.removed.len(), 1);
    assert_eq!(changes.removed[0].id, "b");
    assert_eq!(store.get("a").unwrap().desired_state, DesiredState::Running);
    assert_eq!(store.get("c").unwrap().extra["note"], "hand-added");

    std::fs::write(&path, "{oops").unwrap();
    assert!(matches!(
        store.reload().await,
        Err(StoreError::Invalid { .. })
    ));
    assert_eq!(store.list().len(), 2, "last good state stays");
    assert!(store.invalid().is_some());
}

#[tokio::test]
async fn concurrent_mutations_are_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = std::sync::Arc::new(Store::open(path.clone()).unwrap());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert(record(&format!("id{i}"), &format!("n{i}")))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(Store::open(path).unwrap().list().len(), 50);
}

#[tokio::test]
async fn a_follower_learns_which_records_changed_by_the_host_or_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let store = Store::open(path.clone()).unwrap();
    store.insert(record("a", "alpha")).await.unwrap();
    // Nothing is kept before someone follows.
    store.follow();
    assert!(store.take_followed().is_empty());
    store.insert(record("b", "beta")).await.unwrap();
    store.insert(record("c", "gamma")).await.unwrap();
    store.update("b", |r| r.restarts = 1).await.unwrap();
    store.remove("c").await.unwrap();
    let ids = |set: HashSet<String>| {
        let mut v: Vec<String> = set.into_iter().collect();
        v.sort();
        v
    };
    assert_eq!(ids(store.take_followed()), ["b", "c"]);
    assert!(store.take_followed().is_empty(), "taken once");

    // A hand edit read in counts too: the changed record and the removed one.
    store.flush().await.unwrap();
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let list = doc["environments"].as_array_mut().unwrap();
    list.retain(|r| r["id"] != "b");
    list[0]["desiredState"] = "running".into();
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    store.reload().await.unwrap().expect("changes");
    assert_eq!(ids(store.take_followed()), ["a", "b"]);
}

#[test]
fn a_records_file_or_journal_over_the_limit_is_refused_unread_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    let journal = journal::path_for(&path);
    for huge in [&path, &journal] {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&journal);
        // Sparse: the read stops one byte past the limit.
        let file = std::fs::File::create(huge).unwrap();
        file.set_len(file::MAX_FILE_BYTES + 1).unwrap();
        let err = Store::open(path.clone()).unwrap_err().to_string();
        assert!(err.contains("larger than 1073741824 bytes"), "{err}");
        assert_eq!(
            std::fs::metadata(huge).unwrap().len(),
            file::MAX_FILE_BYTES + 1
        );
        let beside = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(beside, 1, "nothing is copied aside or written beside it");
    }
}
