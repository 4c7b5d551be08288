//! The store against a real directory: durability, group commit, outside edits and
//! broken files.

use super::*;

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

    let reopened = Store::open(path.clone()).unwrap();
    let list = reopened.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].desired_state, DesiredState::Running);
    // No temp files are left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "environments.json")
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
        (r#"{"environments":[{"id":"a"}]}"#, "missing field"),
        (
            r#"{"environments":[{"id":"a","name":"x","provider":"p","createdAt":"","updatedAt":""},{"id":"b","name":"x","provider":"p","createdAt":"","updatedAt":""}]}"#,
            "duplicate name",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let store = Store::open(path.clone()).unwrap();
        let err = store.invalid().expect("reported invalid");
        assert!(err.contains(needle), "{err}");
        assert!(store.list().is_empty());
    }
}

#[tokio::test]
async fn an_invalid_file_is_copied_aside_before_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("environments.json");
    std::fs::write(&path, "{broken").unwrap();
    let store = Store::open(path.clone()).unwrap();
    store.insert(record("a", "alpha")).await.unwrap();
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
