//! Property-based fuzzing of `tether.toml`: any text, and any table built from the
//! real section and key names with values of any type and size, loads into settings
//! or fails with an error that names the file — never a panic.
//!
//! Short runs are part of `cargo test`; a long one is
//! `PROPTEST_CASES=20000 cargo test -p tether --release --lib config::fuzz`.

use std::net::SocketAddr;

use proptest::prelude::*;
use toml::Value;

use super::*;

const SECTIONS: &[(&str, &[&str])] = &[
    (
        "lifecycle",
        &[
            "start_timeout_secs",
            "stop_timeout_secs",
            "call_timeout_secs",
            "removal_retry_secs",
        ],
    ),
    (
        "limits",
        &[
            "memory_mib",
            "workspace_mib",
            "state_mib",
            "max_open_files",
            "host_open_files",
            "max_processes",
            "max_resources",
            "guest_threads",
            "share_memory_images",
            "compile_mib",
            "compile_secs",
            "fuel",
        ],
    ),
    (
        "health",
        &[
            "interval_ms",
            "timeout_ms",
            "failure_threshold",
            "runtime_grace_ms",
        ],
    ),
    (
        "restart",
        &[
            "initial_backoff_ms",
            "max_backoff_ms",
            "max_retries",
            "stable_after_ms",
        ],
    ),
    (
        "relay",
        &[
            "window_messages",
            "window_kib",
            "max_message_kib",
            "max_connections",
            "ping_interval_secs",
            "idle_timeout_secs",
            "session_ttl_secs",
        ],
    ),
    (
        "net",
        &[
            "connect_timeout_ms",
            "first_byte_timeout_ms",
            "max_connections",
            "hosts",
        ],
    ),
    ("cache", &["enabled", "dir"]),
];

const GRANT_KEYS: &[&str] = &[
    "commands",
    "env",
    "set_env",
    "urls",
    "directories",
    "config",
    "replace_builtin",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![0i64, 1, -1, i64::MAX, 4096]).prop_map(Value::Integer),
        any::<f64>().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        prop::sample::select(vec![
            "",
            "*",
            "{any}",
            "{any...}",
            "{path}",
            "git",
            "/bin/sh",
            "..",
            "../x",
            "/",
            "http://*",
            "https://example.com:*",
            "http://127.0.0.1:1",
            "local-process",
            "x.wasm",
            "HOME",
            "PATH=1",
            "LD_*",
            "127.0.0.1",
            "::1",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        "[ -~]{0,24}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "program",
                        "args",
                        "file",
                        "sha256",
                        "x",
                        "127.0.0.1"
                    ]),
                    inner
                ),
                0..3,
            )
            .prop_map(|kv| Value::Table(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// A config table over the real names, each present with a value of any shape.
fn config() -> impl Strategy<Value = toml::Table> {
    let section = prop::sample::select(SECTIONS).prop_flat_map(|(name, keys)| {
        prop::collection::vec((prop::sample::select(keys), value()), 0..4).prop_map(move |kv| {
            let table: toml::Table = kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            (name.to_owned(), Value::Table(table))
        })
    });
    let grant = (
        prop::sample::select(vec![
            "local-process",
            "git-worktree",
            "http-sandbox",
            "mine",
            "..",
            "a b",
        ]),
        prop::collection::vec((prop::sample::select(GRANT_KEYS), value()), 0..4),
    )
        .prop_map(|(provider, kv)| {
            let table: toml::Table = kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            (provider.to_owned(), Value::Table(table))
        });
    (
        prop::collection::vec(section, 0..4),
        prop::collection::vec(grant, 0..3),
    )
        .prop_map(|(sections, grants)| {
            let mut root: toml::Table = sections.into_iter().collect();
            if !grants.is_empty() {
                root.insert(
                    "providers".into(),
                    Value::Table(grants.into_iter().collect()),
                );
            }
            root
        })
}

fn load(text: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, text)?;
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    if let Err(e) = ServeConfig::load(listen, dir.path().join("data"), &path) {
        let message = e.to_string();
        prop_assert!(!message.is_empty());
        // Parse and read errors name the file; the rest name the setting.
        if matches!(e, ConfigError::Parse { .. } | ConfigError::Read { .. }) {
            prop_assert!(message.contains("tether.toml"), "{message}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: crate::testing::fuzz_cases(128), ..ProptestConfig::default() })]

    #[test]
    fn real_names_any_values(table in config()) {
        let text = toml::to_string(&table).unwrap_or_default();
        load(&text)?;
    }

    #[test]
    fn arbitrary_text(text in any::<String>()) {
        load(&text)?;
    }

    #[test]
    fn toml_alphabet_soup(text in "[\\[\\]a-z_=\" .0-9{},\n#]{0,64}") {
        load(&text)?;
    }
}
