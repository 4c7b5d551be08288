//! Property-based fuzzing of the records file as people and programs may leave it:
//! any bytes at all give a clear error or a valid state, never a panic; a file of good
//! records with one record mangled keeps every good record in force, holds the
//! mangled one back (or accepts it only if it is valid), and a write by the host keeps
//! the good records and the held one's text.
//!
//! Short runs are part of `cargo test`; a long one is
//! `PROPTEST_CASES=20000 cargo test -p tether --release --lib store::fuzz`.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

fn good(i: usize) -> Value {
    json!({
        "id": format!("id-{i}"),
        "name": format!("env-{i}"),
        "provider": "local-process",
        "config": {"projectPath": "/tmp/p"},
        "desiredState": "stopped",
        "runtimeGeneration": 2,
        "restarts": 0,
        "restartPolicy": "never",
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:00Z",
    })
}

/// Values a hand edit might put in a field: wrong types, path tricks, huge or odd
/// strings, deep nesting.
fn wild_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "..",
            "../../etc",
            "/abs",
            "a/b",
            "running",
            "stopped",
            "always",
            "never",
            "on-failure",
            "local-process",
            "id-0",
            "env-0",
            "x\u{0}y",
            "\u{202e}evil",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        "[ -~]{0,16}".prop_map(Value::String),
        (1usize..100_000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "id",
    "name",
    "provider",
    "config",
    "desiredState",
    "resourceId",
    "workspacePath",
    "providerState",
    "runtimeGeneration",
    "runtimeTokenSha256",
    "lastError",
    "restarts",
    "restartPolicy",
    "restartHistory",
    "createdAt",
    "updatedAt",
    "unknownField",
];

/// A record with some fields replaced, removed or added.
fn mangled() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (prop::sample::select(FIELDS), prop::option::of(wild_value())),
        1..5,
    )
    .prop_map(|edits| {
        let mut record = good(99);
        if let Value::Object(map) = &mut record {
            for (field, value) in edits {
                match value {
                    Some(v) => map.insert(field.to_owned(), v),
                    None => map.remove(field),
                };
            }
        }
        record
    })
}

fn write(dir: &std::path::Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("environments.json");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing the fixture: {e}"));
    path
}

fn check_in_force(store: &Store) -> Result<(), TestCaseError> {
    for record in store.list() {
        prop_assert!(
            validate::check(&record).is_ok(),
            "invalid record in force: {record:?}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crate::testing::fuzz_cases(64), ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_open_or_fail_clearly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir()?;
        let path = write(dir.path(), &bytes);
        match Store::open(path) {
            Ok(store) => check_in_force(&store)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn any_document_shape_opens_or_fails_clearly(doc in wild_value()) {
        let dir = tempfile::tempdir()?;
        let path = write(dir.path(), doc.to_string().as_bytes());
        if let Ok(store) = Store::open(path) {
            check_in_force(&store)?;
        }
    }

    #[test]
    fn a_mangled_record_never_costs_a_good_one(bad in mangled(), at in 0usize..4) {
        let dir = tempfile::tempdir()?;
        let mut records: Vec<Value> = (0..3).map(good).collect();
        records.insert(at.min(3), bad.clone());
        let doc = json!({"version": 1, "environments": records});
        let path = write(dir.path(), doc.to_string().as_bytes());
        let store = Store::open(path.clone())
            .map_err(|e| TestCaseError::fail(format!("a file with good records refused: {e}")))?;
        check_in_force(&store)?;
        for i in 0..3 {
            let id = format!("id-{i}");
            let name = format!("env-{i}");
            let in_force = store.get(&id).is_some_and(|r| r.name == name);
            if bad["id"] == id.as_str() || bad["name"] == name.as_str() {
                // Two records claim one id or name: the one earlier in the file is in
                // force, the other held back (both stay in the file, checked below).
                if at > i {
                    prop_assert!(in_force, "good record {id} lost to a later duplicate");
                }
            } else {
                let held = store.held_reason(&id);
                prop_assert!(in_force && held.is_none(), "good record {id} lost or held: {held:?}");
            }
        }
        let bad_is_held = store.held().len() == 1;
        prop_assert!(bad_is_held || store.list().len() == 4, "the mangled record vanished");

        // A write by the host keeps every good record and the held one's text.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime
            .block_on(store.insert(Record::new("new".into(), "fresh".into(), "local-process".into(), Map::new())))
            .map_err(|e| TestCaseError::fail(format!("insert failed: {e}")))?;
        runtime
            .block_on(store.flush())
            .map_err(|e| TestCaseError::fail(format!("compaction failed: {e}")))?;
        let after: Value = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| TestCaseError::fail(format!("the host wrote invalid JSON: {e}")))?;
        let written = after["environments"].as_array().cloned().unwrap_or_default();
        for i in 0..3 {
            let id = format!("id-{i}");
            prop_assert!(written.iter().any(|r| r["id"] == id.as_str()), "good record {id} not written");
        }
        if bad_is_held {
            prop_assert!(written.contains(&bad), "the held record's text was not kept verbatim");
        }
        prop_assert!(written.iter().any(|r| r["id"] == "new"));
    }
}
