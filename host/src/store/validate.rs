//! What a record must look like before the host applies it: the same rules whether it
//! came from the API or from a hand edit of `environments.json`. A record read from
//! the file that breaks them is held back (reported, never started, stopped or
//! deleted, its text kept); see [`super::document`].

use serde_json::{Map, Value};

use super::Record;
use crate::names;

/// Largest `config`, serialised as JSON.
pub(crate) const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// Deepest `config`: nested arrays and objects, the config object itself counted as
/// one. The files that hold a record wrap it in a few levels of their own (the records
/// file's document and list, a journal entry, a removal), and serde_json refuses to
/// read anything nested past 128 levels: a config near that limit would be accepted
/// once and then make the whole file unreadable, every other record with it.
pub(crate) const MAX_CONFIG_DEPTH: usize = 32;
/// Longest `resourceId`.
pub(crate) const MAX_RESOURCE_ID_BYTES: usize = 1024;
/// Longest `workspacePath`.
pub(crate) const MAX_WORKSPACE_PATH_BYTES: usize = 8 * 1024;
/// Longest `lastError`.
pub(crate) const MAX_LAST_ERROR_BYTES: usize = 16 * 1024;
/// Most `providerState` entries.
pub(crate) const MAX_STATE_ENTRIES: usize = 1024;
/// Longest `providerState` key.
pub(crate) const MAX_STATE_KEY_BYTES: usize = 1024;
/// Largest `providerState`, keys and values together.
pub(crate) const MAX_STATE_BYTES: usize = 1024 * 1024;
/// Most `restartHistory` entries.
pub(crate) const MAX_HISTORY_ENTRIES: usize = 64;
/// Longest timestamp (`createdAt`, `updatedAt`, a `restartHistory` entry).
pub(crate) const MAX_STAMP_BYTES: usize = 64;
/// Longest provision key (`provisionKey.key`: a thread or workspace id).
pub(crate) const MAX_PROVISION_KEY_BYTES: usize = 256;

/// Longest `idleStopSecs`: 30 days.
pub(crate) const MAX_IDLE_STOP_SECS: u64 = 30 * 24 * 60 * 60;
/// Largest record as a whole, unknown fields included, serialised as JSON.
pub(crate) const MAX_RECORD_BYTES: usize = 2 * 1024 * 1024;

/// Checks a record against the rules; the reason names the field.
pub(crate) fn check(record: &Record) -> Result<(), String> {
    names::validate("environment", &record.id).map_err(|_| {
        format!(
            "invalid id {}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            crate::untrusted::named(&record.id)
        )
    })?;
    names::validate("environment", &record.name).map_err(|e| e.to_string())?;
    names::validate("provider", &record.provider).map_err(|e| e.to_string())?;
    names::validate("user", &record.owner).map_err(|e| format!("owner: {e}"))?;
    check_config(&record.config)?;
    // Kept as they came and written back inside the files that hold a record (a
    // pending removal's journal wraps it three levels deeper than the records file):
    // bounded as `config` is, so no file that holds the record is made unreadable.
    if config_nesting(&record.extra) > MAX_CONFIG_DEPTH {
        return Err(format!(
            "unknown fields nest arrays and objects more than {MAX_CONFIG_DEPTH} levels deep (the record counts as one)"
        ));
    }
    check_idle_stop(record.idle_stop_secs)?;
    bounded(
        "resourceId",
        record.resource_id.as_deref(),
        MAX_RESOURCE_ID_BYTES,
    )?;
    bounded(
        "workspacePath",
        record.workspace_path.as_deref(),
        MAX_WORKSPACE_PATH_BYTES,
    )?;
    bounded(
        "lastError",
        record.last_error.as_deref(),
        MAX_LAST_ERROR_BYTES,
    )?;
    if let Some(sha) = &record.runtime_token_sha256
        && !(sha.len() == 64 && sha.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err("runtimeTokenSha256 must be 64 hexadecimal digits".into());
    }
    if record.provider_state.len() > MAX_STATE_ENTRIES {
        return Err(format!(
            "providerState has more than {MAX_STATE_ENTRIES} entries"
        ));
    }
    let mut state_bytes = 0;
    for (key, value) in &record.provider_state {
        if key.len() > MAX_STATE_KEY_BYTES {
            return Err(format!(
                "a providerState key is longer than {MAX_STATE_KEY_BYTES} bytes"
            ));
        }
        state_bytes += key.len() + value.len();
    }
    if state_bytes > MAX_STATE_BYTES {
        return Err(format!(
            "providerState is larger than {MAX_STATE_BYTES} bytes"
        ));
    }
    if record.restart_history.len() > MAX_HISTORY_ENTRIES {
        return Err(format!(
            "restartHistory has more than {MAX_HISTORY_ENTRIES} entries"
        ));
    }
    for stamp in record.restart_history.iter() {
        bounded("a restartHistory entry", Some(stamp), MAX_STAMP_BYTES)?;
    }
    if let Some(k) = &record.provision_key {
        check_provision_key(k)?;
    }
    if let Some(host) = &record.last_host
        && !crate::config::is_host_id(host)
    {
        return Err("lastHost must be a host id: 1 to 64 letters, digits, '-' or '_'".into());
    }
    bounded("createdAt", Some(&record.created_at), MAX_STAMP_BYTES)?;
    bounded("updatedAt", Some(&record.updated_at), MAX_STAMP_BYTES)?;
    Ok(())
}

/// Checks a `provisionKey`: a template name, a known scope, and a key of at most
/// [`MAX_PROVISION_KEY_BYTES`] without control characters (empty exactly for `user`).
pub(crate) fn check_provision_key(k: &super::ProvisionKey) -> Result<(), String> {
    names::validate("template", &k.template).map_err(|e| format!("provisionKey: {e}"))?;
    let keyed = match k.scope.as_str() {
        "user" => false,
        "thread" | "workspace" => true,
        _ => return Err("provisionKey.scope must be user, thread or workspace".into()),
    };
    if k.key.is_empty() == keyed
        || k.key.len() > MAX_PROVISION_KEY_BYTES
        || k.key.chars().any(char::is_control)
    {
        return Err(format!(
            "provisionKey.key must be 1-{MAX_PROVISION_KEY_BYTES} bytes without control characters for a thread or workspace scope, and empty for user"
        ));
    }
    Ok(())
}

/// Checks an environment's `config` (also applied to API creates and patches).
pub(crate) fn check_config(config: &Map<String, Value>) -> Result<(), String> {
    let size = json_size(&Value::Object(config.clone()));
    if size > MAX_CONFIG_BYTES {
        return Err(format!(
            "config is {size} bytes as JSON; the limit is {MAX_CONFIG_BYTES}"
        ));
    }
    if config_nesting(config) > MAX_CONFIG_DEPTH {
        return Err(format!(
            "config nests arrays and objects more than {MAX_CONFIG_DEPTH} levels deep (the config object counts as one)"
        ));
    }
    Ok(())
}

/// How deep arrays and objects nest in `config`, counting `config` itself as one;
/// iterative, so a config of any depth is measured without the host's stack.
fn config_nesting(config: &Map<String, Value>) -> usize {
    let mut deepest = 1;
    let mut pending: Vec<(&Value, usize)> = config.values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        deepest = deepest.max(depth);
        pending.extend(children.map(|v| (v, depth + 1)));
    }
    deepest
}

/// Checks an `idleStopSecs` (also applied to API creates and patches).
pub(crate) fn check_idle_stop(secs: Option<u64>) -> Result<(), String> {
    match secs {
        Some(s) if s > MAX_IDLE_STOP_SECS => Err(format!(
            "idleStopSecs is {s}; the limit is {MAX_IDLE_STOP_SECS} (30 days); 0 means never"
        )),
        _ => Ok(()),
    }
}

/// Checks the size of a whole record as it appears in the file.
pub(crate) fn check_raw_size(raw: &Value) -> Result<(), String> {
    let size = json_size(raw);
    if size > MAX_RECORD_BYTES {
        return Err(format!(
            "the record is {size} bytes as JSON; the limit is {MAX_RECORD_BYTES}"
        ));
    }
    Ok(())
}

/// A message about untrusted text (a parser's complaint quoting it) made safe for
/// logs and answers: control characters escaped, cut to about 300 bytes.
pub(crate) fn clean(message: &str) -> String {
    crate::untrusted::shown(message, 300)
}

fn bounded(field: &str, value: Option<&str>, max: usize) -> Result<(), String> {
    match value {
        Some(v) if v.len() > max => {
            Err(format!("{field} is {} bytes; the limit is {max}", v.len()))
        }
        _ => Ok(()),
    }
}

/// Bytes of `value` as compact JSON, counted without building the text.
fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Record {
        Record::new(
            "6f1c7a2e-0000-4000-8000-000000000001".into(),
            "dev".into(),
            "local-process".into(),
            Map::new(),
        )
    }

    #[test]
    fn messages_about_untrusted_text_are_escaped_and_cut() {
        let m = clean(&format!(
            "unknown variant `a\nb\u{1b}[2J`{}",
            "x".repeat(1000)
        ));
        assert!(m.starts_with("unknown variant `a\\nb\\u{1b}[2J`"), "{m}");
        assert!(!m.contains('\n') && !m.contains('\u{1b}'));
        // About 300 bytes, plus the marker saying how long it was.
        assert!(m.len() < 340 && m.ends_with("(cut from 1025 bytes)"), "{m}");
    }

    #[test]
    fn an_api_made_record_passes() {
        assert_eq!(check(&good()), Ok(()));
    }

    #[test]
    fn config_nesting_counts_the_config_object_as_one() {
        let config = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(config_nesting(&Map::new()), 1);
        assert_eq!(config_nesting(&config(serde_json::json!({"a": 1}))), 1);
        assert_eq!(config_nesting(&config(serde_json::json!({"a": []}))), 2);
        let deepest = serde_json::json!({"a": [1], "b": {"c": [[{}]]}, "d": "x"});
        assert_eq!(config_nesting(&config(deepest)), 5);
    }

    #[test]
    fn names_ids_providers_and_sizes_are_checked() {
        type Spoil = Box<dyn Fn(&mut Record)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (
                Box::new(|r| r.name = "../../../victim".into()),
                "environment name",
            ),
            (Box::new(|r| r.id = "a/b".into()), "invalid id"),
            (Box::new(|r| r.provider = "/".into()), "provider name"),
            (
                Box::new(|r| r.owner = "bob/../admin".into()),
                "owner: invalid user name",
            ),
            (Box::new(|r| r.owner = String::new()), "owner"),
            (
                Box::new(|r| r.last_error = Some("e".repeat(MAX_LAST_ERROR_BYTES + 1))),
                "lastError",
            ),
            (
                Box::new(|r| r.resource_id = Some("r".repeat(MAX_RESOURCE_ID_BYTES + 1))),
                "resourceId",
            ),
            (
                Box::new(|r| {
                    r.config
                        .insert("big".into(), "x".repeat(MAX_CONFIG_BYTES).into());
                }),
                "config",
            ),
            (
                Box::new(|r| {
                    let mut deep = Value::Null;
                    for _ in 0..MAX_CONFIG_DEPTH {
                        deep = Value::Array(vec![deep]);
                    }
                    r.config.insert("deep".into(), deep);
                }),
                "config nests",
            ),
            (
                Box::new(|r| {
                    let mut deep = Value::Null;
                    for _ in 0..MAX_CONFIG_DEPTH {
                        deep = Value::Array(vec![deep]);
                    }
                    r.extra.insert("deep".into(), deep);
                }),
                "unknown fields nest",
            ),
            (
                Box::new(|r| r.runtime_token_sha256 = Some("zz".into())),
                "runtimeTokenSha256",
            ),
            (Box::new(|r| r.last_host = Some("../a".into())), "lastHost"),
            (Box::new(|r| r.last_host = Some("h".repeat(65))), "lastHost"),
            (
                Box::new(|r| r.idle_stop_secs = Some(MAX_IDLE_STOP_SECS + 1)),
                "idleStopSecs",
            ),
            (
                Box::new(|r| r.restart_history = vec!["t".into(); MAX_HISTORY_ENTRIES + 1]),
                "restartHistory",
            ),
            (
                Box::new(|r| {
                    r.provision_key = Some(super::super::ProvisionKey {
                        template: "chat".into(),
                        scope: "thread".into(),
                        key: "k".repeat(MAX_PROVISION_KEY_BYTES + 1),
                    })
                }),
                "provisionKey",
            ),
            (
                Box::new(|r| {
                    r.provision_key = Some(super::super::ProvisionKey {
                        template: "../x".into(),
                        scope: "user".into(),
                        key: String::new(),
                    })
                }),
                "provisionKey",
            ),
        ];
        for (spoil, needle) in cases {
            let mut r = good();
            spoil(&mut r);
            let err = check(&r).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(err.len() < 400, "{err}");
        }
    }
}
