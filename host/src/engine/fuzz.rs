//! Property-based fuzzing of what a provider returns across the WIT boundary: its
//! `info()` (strings and lists around every limit, patterns of any shape), its start
//! result and its errors. The host never panics on any of it, accepts only what is
//! within its limits, and keeps what it stores or shows bounded.
//!
//! A short run is part of `cargo test`; a long one is
//! `PROPTEST_CASES=200000 cargo test -p tether --release --lib engine::fuzz`.

use proptest::prelude::*;

use super::bindings::types as wit;
use super::types::*;
use crate::untrusted::MAX_ERROR;

/// Lengths that sit on every limit and either side of it.
fn len_near(limit: usize) -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(limit), Just(limit + 1), 0..=limit + 2,]
}

fn text(limit: usize) -> impl Strategy<Value = String> {
    (
        len_near(limit),
        prop::sample::select(vec!['a', 'é', '/', '.', '*', '{', '\n', '\u{0}']),
    )
        .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect::<String>())
        .prop_map(move |s| {
            // A multi-byte character may take the string past the limit: cut on a
            // character boundary so the byte length is what was asked for or less.
            let mut end = s.len().min(limit + 1);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        })
}

fn pattern_word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "*",
            "**",
            "{any}",
            "{any...}",
            "{path}",
            "{projectPath}",
            "-c",
            "--",
            "git",
            "/bin/sh",
            "",
            " ",
            "..",
            "a*b"
        ])
        .prop_map(str::to_owned),
        text(MAX_INFO_ITEM),
    ]
}

/// Short lists mostly, and some at the list limit and one past it.
fn list<T: std::fmt::Debug + 'static>(item: BoxedStrategy<T>) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![
        4 => prop::collection::vec(item.clone(), 0..4),
        1 => prop::collection::vec(item, MAX_INFO_LIST..=MAX_INFO_LIST + 1),
    ]
}

fn info() -> impl Strategy<Value = wit::ProviderInfo> {
    let command = (pattern_word(), list(pattern_word().boxed()))
        .prop_map(|(program, args)| wit::CommandRequest { program, args });
    let url = prop_oneof![
        prop::sample::select(vec![
            "http://127.0.0.1:*",
            "https://example.com:443",
            "http://*:*",
            "ftp://x:1",
            "http://[::1]:8080",
            "",
            "http://a:99999"
        ])
        .prop_map(str::to_owned),
        text(MAX_INFO_ITEM),
    ];
    let capabilities = (
        list(command.boxed()),
        list(url.boxed()),
        list(text(MAX_INFO_ITEM).boxed()),
    )
        .prop_map(|(commands, urls, directories)| wit::Capabilities {
            commands,
            urls,
            directories,
        });
    (
        prop_oneof![
            prop::sample::select(vec!["ok-name", "..", "a/b", "", "local-process"])
                .prop_map(str::to_owned),
            text(70),
        ],
        text(MAX_INFO_VERSION),
        text(MAX_INFO_DESCRIPTION),
        capabilities,
        prop_oneof![
            Just("{\"type\":\"object\"}".to_owned()),
            text(MAX_INFO_SCHEMA)
        ],
        list(text(MAX_INFO_ITEM).boxed()),
    )
        .prop_map(
            |(name, version, description, capabilities, config_schema, message_types)| {
                wit::ProviderInfo {
                    name,
                    version,
                    description,
                    capabilities,
                    config_schema,
                    message_types,
                }
            },
        )
}

proptest! {
    #[test]
    fn info_is_taken_only_within_limits(info in info()) {
        let within = info.version.len() <= MAX_INFO_VERSION
            && info.description.len() <= MAX_INFO_DESCRIPTION
            && info.config_schema.len() <= MAX_INFO_SCHEMA
            && info.message_types.len() <= MAX_INFO_LIST
            && info.message_types.iter().all(|t| t.len() <= MAX_INFO_ITEM)
            && info.capabilities.commands.len() <= MAX_INFO_LIST
            && info.capabilities.commands.iter().all(|c| {
                c.args.len() <= MAX_INFO_LIST
                    && c.program.len() <= MAX_INFO_ITEM
                    && c.args.iter().all(|a| a.len() <= MAX_INFO_ITEM)
            })
            && info.capabilities.urls.len() <= MAX_INFO_LIST
            && info.capabilities.urls.iter().all(|u| u.len() <= MAX_INFO_ITEM)
            && info.capabilities.directories.len() <= MAX_INFO_LIST
            && info.capabilities.directories.iter().all(|d| d.len() <= MAX_INFO_ITEM);
        let name_ok = crate::names::validate("provider", &info.name).is_ok();
        match ProviderDescription::from_wit(info) {
            Ok(_) => prop_assert!(within && name_ok, "over a limit or badly named, yet loaded"),
            Err(message) => {
                prop_assert!(!message.is_empty());
                // The reason quotes at most one item of the provider's.
                prop_assert!(message.len() <= 2 * MAX_INFO_ITEM + 512, "{} bytes of reason", message.len());
            }
        }
    }

    #[test]
    fn start_results_are_held_to_the_limits(
        resource_id in text(MAX_RESOURCE_ID),
        workspace_path in text(MAX_WORKSPACE_PATH),
        metadata in prop_oneof![
            prop::collection::vec((text(64), text(1024)), 0..4),
            prop::collection::vec((text(8), text(8)), MAX_METADATA_ENTRIES..=MAX_METADATA_ENTRIES + 1),
            prop::collection::vec((text(8), text(MAX_METADATA_BYTES)), 1..3),
        ],
    ) {
        let result = wit::StartResult {
            resource_id,
            workspace_path,
            metadata: metadata.into_iter().map(|(key, value)| wit::Entry { key, value }).collect(),
        };
        match bounded(Ok(Reply::Started(StartOutcome::from(result)))) {
            Ok(Reply::Started(outcome)) => {
                let bytes: usize = outcome.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
                prop_assert!(outcome.resource_id.len() <= MAX_RESOURCE_ID);
                prop_assert!(outcome.workspace_path.len() <= MAX_WORKSPACE_PATH);
                prop_assert!(outcome.metadata.len() <= MAX_METADATA_ENTRIES);
                prop_assert!(bytes <= MAX_METADATA_BYTES);
            }
            Ok(other) => prop_assert!(false, "a start became {other:?}"),
            Err(failure) => prop_assert!(failure.message.len() <= MAX_ERROR),
        }
    }

    #[test]
    fn provider_errors_are_cut(message in text(3 * MAX_ERROR), kind in 0u8..5) {
        let error = match kind {
            0 => wit::ProviderError::InvalidInput(message),
            1 => wit::ProviderError::NotFound(message),
            2 => wit::ProviderError::Denied(message),
            3 => wit::ProviderError::Unsupported(message),
            _ => wit::ProviderError::Failed(message),
        };
        let failure = ProviderFailure::from(error);
        // Cut to the limit plus the marker saying how long it was.
        prop_assert!(failure.message.len() <= MAX_ERROR + 40, "{} bytes", failure.message.len());
    }
}
