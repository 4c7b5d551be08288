//! The operator's config values, taken out of text the API shows. A provider is
//! handed `[providers.NAME] config` (API keys, the URL of an internal service) and a
//! template's `secret_keys` values at start, and the API never shows them; but what
//! the provider says back (a failed start's `lastError`, its log lines) may quote
//! them, as may a remote API's answer it passes on (`the sandbox API at URL refused
//! the API key`, `invalid key sk-…`). Such text is shown with `<config:KEY>` in place
//! of each value, to every caller: the value as it is, and as a URL's query or form
//! carries it (percent-encoded, as an error naming the URL a request went to shows it).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::config::ServeConfig;

/// Shortest value taken out: a shorter one (`true`, a port, a model name like `m1`)
/// would mangle unrelated text, and is no secret worth the name.
const MIN_CHARS: usize = 6;

/// Most values taken out of one text (the deepest config an operator writes has a
/// handful); the rest are left, not the text slowed down without bound.
const MOST_VALUES: usize = 64;

/// What a URL's query or a form leaves as it is: RFC 3986's unreserved characters.
/// Everything else is percent-encoded, as clients encode a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The config values to take out of one environment's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConfigValues {
    /// (value as it is, value as a JSON string holds it, its mark), longest first so
    /// a value that contains another is replaced whole.
    values: Vec<(String, String, String)>,
}

impl ConfigValues {
    /// The string values in `configs` (nested ones by their dotted key), each with
    /// the key it is set under.
    pub(crate) fn new<'a>(configs: impl IntoIterator<Item = &'a Map<String, Value>>) -> Self {
        let mut values = Vec::new();
        for config in configs {
            collect("", config, &mut values);
        }
        values.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        values.dedup_by(|a, b| a.0 == b.0);
        values.truncate(MOST_VALUES);
        Self { values }
    }

    /// What the provider of an environment of `provider` (provisioned from
    /// `template`, if any) is handed beyond its record's config under `config`: the
    /// operator's `[providers.NAME] config` and the template's secret values.
    pub(crate) fn handed(config: &ServeConfig, provider: &str, template: Option<&str>) -> Self {
        let operator = config.provider_config.get(provider).map(|o| o.values());
        let secrets = template
            .and_then(|t| config.templates.get(t))
            .map(|t| t.secrets());
        Self::new(operator.into_iter().chain(secrets))
    }

    /// Whether there is nothing to take out.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every value replaced by its mark.
    pub(crate) fn hide(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (plain, _, mark) in &self.values {
            if text.contains(plain.as_str()) {
                text = text.replace(plain.as_str(), mark);
            }
        }
        text
    }

    /// `line` (one JSON object) with every value replaced by its mark, as the JSON
    /// string holding it escapes it.
    pub(crate) fn hide_in_json(&self, line: &str) -> String {
        let mut line = line.to_owned();
        for (_, escaped, mark) in &self.values {
            if line.contains(escaped.as_str()) {
                line = line.replace(escaped.as_str(), mark);
            }
        }
        line
    }
}

/// Adds the string leaves of `config` under `prefix` to `values`.
fn collect(prefix: &str, config: &Map<String, Value>, values: &mut Vec<(String, String, String)>) {
    for (key, value) in config {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        collect_value(key, value, values);
    }
}

/// Adds `value`, set under `key`, or its string leaves (nested keys dotted, list
/// items numbered) to `values`.
fn collect_value(key: String, value: &Value, values: &mut Vec<(String, String, String)>) {
    match value {
        Value::String(text) if text.chars().count() >= MIN_CHARS => {
            let Ok(quoted) = serde_json::to_string(text) else {
                return;
            };
            let escaped = quoted[1..quoted.len() - 1].to_owned();
            // The key is the operator's (checked TOML), shown as it is written.
            let mark = format!("<config:{key}>");
            // Percent-encoded, it needs no JSON escaping.
            let encoded = utf8_percent_encode(text, QUERY_VALUE).to_string();
            if encoded != *text {
                values.push((encoded.clone(), encoded, mark.clone()));
            }
            values.push((text.clone(), escaped, mark));
        }
        Value::Object(inner) => collect(&key, inner, values),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_value(format!("{key}.{i}"), item, values);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn each_long_enough_value_is_replaced_by_its_key_plain_and_in_json() {
        let operator = map(json!({
            "apiUrl": "http://10.0.0.7:8790/v1",
            "apiKey": "sk-\"quoted\"-key",
            "region": "eu",
            "nested": {"token": "abcdef123"},
            "list": ["first-value"],
        }));
        let template = map(json!({"secret": "sk-\"quoted\"-key-longer"}));
        let values = ConfigValues::new([&operator, &template]);
        let text = "at http://10.0.0.7:8790/v1 with sk-\"quoted\"-key-longer, abcdef123, first-value in eu";
        assert_eq!(
            values.hide(text),
            "at <config:apiUrl> with <config:secret>, <config:nested.token>, <config:list.0> in eu"
        );
        let line = json!({"message": "refused sk-\"quoted\"-key"}).to_string();
        assert_eq!(
            values.hide_in_json(&line),
            r#"{"message":"refused <config:apiKey>"}"#
        );
        assert!(ConfigValues::new([&map(json!({"a": "short"}))]).is_empty());
    }

    #[test]
    fn a_value_is_replaced_as_a_urls_query_carries_it_too() {
        let operator = map(json!({"apiKey": "k3y+with/slash=", "plain": "abc-def_1"}));
        let values = ConfigValues::new([&operator]);
        let text = "GET http://api.example/v1?key=k3y%2Bwith%2Fslash%3D&id=abc-def_1 failed";
        assert_eq!(
            values.hide(text),
            "GET http://api.example/v1?key=<config:apiKey>&id=<config:plain> failed"
        );
        let line = json!({"message": text}).to_string();
        assert_eq!(
            values.hide_in_json(&line),
            json!({"message": "GET http://api.example/v1?key=<config:apiKey>&id=<config:plain> failed"})
                .to_string()
        );
        assert_eq!(values.hide("k3y+with/slash="), "<config:apiKey>");
    }
}
