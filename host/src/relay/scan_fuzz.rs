//! Property-based fuzzing of the frame reader: on any text, the quick reader either
//! declines or gives exactly what `serde_json` gives, `Head::parse` always gives what
//! `serde_json` gives, and neither panics.
//!
//! A short run is part of `cargo test`; a long one is
//! `PROPTEST_CASES=200000 cargo test -p tether --release --lib scan_fuzz`. Inputs that
//! once failed are kept by proptest in `host/proptest-regressions/`, and hand-picked
//! ones in `host/fuzz-corpus/frames/` (one frame per file), both replayed every run.

use std::borrow::Cow;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::protocol::Head;
use super::scan::head;

type Fields = (Option<String>, Option<String>, Option<u64>);

fn fields(h: Head<'_>) -> Fields {
    (
        h.kind.map(Cow::into_owned),
        h.thread.map(Cow::into_owned),
        h.received,
    )
}

/// Checks the property on `text`, as a proptest failure rather than a panic.
fn agrees(text: &str) -> Result<(), TestCaseError> {
    let full = serde_json::from_str::<Head<'_>>(text).ok().map(fields);
    let parsed = Head::parse(text).map(fields);
    prop_assert_eq!(&parsed, &full, "Head::parse differs on {:?}", text);
    if let Some(quick) = head(text).map(fields) {
        prop_assert_eq!(Some(quick), full, "the quick reader differs on {:?}", text);
    }
    Ok(())
}

/// Strings with the characters that matter to a JSON reader: quotes, backslashes,
/// escapes, control characters, multi-byte text.
fn tricky_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::char::range('a', 'z'),
            1 => prop::sample::select(vec!['"', '\\', '/', '\n', '\t', '\u{1}', '\u{7f}', 'é', '✓', '🎉', 'u', '{', '}']),
        ],
        0..12,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// Keys, mostly the routing fields, so they are often present, repeated or nested.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["type", "threadId", "received", "requestId", "payload"])
            .prop_map(str::to_owned),
        1 => tricky_string(),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One edit of a serialized frame: an inserted JSON-significant character, a cut, or
/// a repeated stretch (a duplicated field, say).
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Remove(usize, usize),
    Repeat(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (
            any::<usize>(),
            prop::sample::select(vec![
                '"', '\\', '{', '}', '[', ']', ',', ':', '0', '-', 'e', '.', ' ', 'n', '\u{1}', 'é'
            ])
        )
            .prop_map(|(at, c)| Edit::Insert(at, c)),
        (any::<usize>(), 0usize..8).prop_map(|(at, n)| Edit::Remove(at, n)),
        (any::<usize>(), 1usize..24).prop_map(|(at, n)| Edit::Repeat(at, n)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len();
        match *e {
            Edit::Insert(at, c) => chars.insert(at % (len + 1), c),
            Edit::Remove(at, n) if len > 0 => {
                let start = at % len;
                chars.drain(start..(start + n).min(len));
            }
            Edit::Repeat(at, n) if len > 0 => {
                let start = at % len;
                let piece: Vec<char> = chars[start..(start + n).min(len)].to_vec();
                chars.splice(start..start, piece);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Frames as apps send them: an object with routing fields, pretty or compact.
fn frame() -> impl Strategy<Value = String> {
    (prop::collection::vec((key(), json()), 0..6), any::<bool>()).prop_map(|(pairs, pretty)| {
        let value = Value::Object(pairs.into_iter().collect());
        let text = if pretty {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        };
        text.unwrap_or_default()
    })
}

proptest! {
    #[test]
    fn frames_as_sent(text in frame()) {
        agrees(&text)?;
    }

    #[test]
    fn frames_edited(text in frame(), edits in prop::collection::vec(edit(), 1..4)) {
        agrees(&apply(&text, &edits))?;
    }

    #[test]
    fn any_value_at_all(value in json()) {
        agrees(&value.to_string())?;
    }

    #[test]
    fn arbitrary_text(text in any::<String>()) {
        agrees(&text)?;
    }

    #[test]
    fn json_alphabet_soup(text in "[ {}\\[\\]\":,\\\\0-9a-z.eE+-]{0,48}") {
        agrees(&text)?;
    }
}

#[test]
fn the_corpus_agrees() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/frames");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = agrees(&text) {
            panic!("{}: {e}", path.display());
        }
        seen += 1;
    }
    assert!(seen > 0, "no corpus in {}", dir.display());
}
