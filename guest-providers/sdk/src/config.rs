//! Reading the merged environment config (`init-vars.config`, a JSON object) with
//! typed getters whose errors name the offending key.

use serde_json::{Map, Value};

use crate::{InitVars, ProviderError};

/// The merged environment config of a start, parsed from its JSON text.
///
/// Every getter treats a missing key and a JSON `null` alike (`Ok(None)`) and
/// answers a value of the wrong type with an `invalid-input` error such as
/// `config.args must be an array of strings`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    values: Map<String, Value>,
}

impl Config {
    /// Parses config text; empty text is an empty config.
    pub fn parse(text: &str) -> Result<Self, ProviderError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(values)) => Ok(Self { values }),
            Ok(other) => Err(ProviderError::invalid_input(format!(
                "config must be a JSON object, not {}",
                json_kind(&other)
            ))),
            Err(err) => Err(ProviderError::invalid_input(format!(
                "config is not valid JSON: {err}"
            ))),
        }
    }

    /// The whole config object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.values
    }

    /// The raw value of `key`, if present and not `null`.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.values.get(key).filter(|value| !value.is_null())
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<Option<String>, ProviderError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(wrong_type(key, "a string", other)),
        }
    }

    /// A boolean value.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ProviderError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(wrong_type(key, "true or false", other)),
        }
    }

    /// A non-negative integer value.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ProviderError> {
        match self.value(key) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(number) => Ok(Some(number)),
                None => Err(wrong_type(key, "a non-negative integer", value)),
            },
        }
    }

    /// An array of strings.
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ProviderError> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let items = value
            .as_array()
            .ok_or_else(|| wrong_type(key, "an array of strings", value))?;
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    ProviderError::invalid_input(format!(
                        "config.{key} must be an array of strings, but item {index} is {}",
                        json_kind(item)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An object whose values are all strings, as `(key, value)` pairs.
    pub fn string_map(&self, key: &str) -> Result<Option<Vec<(String, String)>>, ProviderError> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        let entries = value
            .as_object()
            .ok_or_else(|| wrong_type(key, "an object whose values are strings", value))?;
        entries
            .iter()
            .map(|(name, item)| match item.as_str() {
                Some(text) => Ok((name.clone(), text.to_owned())),
                None => Err(ProviderError::invalid_input(format!(
                    "config.{key}.{name} must be a string, not {}",
                    json_kind(item)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl InitVars {
    /// The merged config of this start, parsed.
    pub fn config(&self) -> Result<Config, ProviderError> {
        Config::parse(&self.config)
    }

    /// One config value (`None` when absent or `null`).
    pub fn config_value(&self, key: &str) -> Result<Option<Value>, ProviderError> {
        Ok(self.config()?.value(key).cloned())
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> ProviderError {
    ProviderError::invalid_input(format!(
        "config.{key} must be {expected}, not {}",
        json_kind(found)
    ))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        match Config::parse(text) {
            Ok(config) => config,
            Err(err) => panic!("{text} did not parse: {}", err.message()),
        }
    }

    #[test]
    fn getters_read_typed_values_and_treat_null_as_absent() {
        let config =
            config(r#"{"command": "node", "args": ["a", "b"], "env": {"K": "v"}, "gone": null}"#);
        assert_eq!(
            config.string("command").ok().flatten().as_deref(),
            Some("node")
        );
        assert_eq!(
            config.string_list("args").ok().flatten(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(
            config.string_map("env").ok().flatten(),
            Some(vec![("K".to_owned(), "v".to_owned())])
        );
        assert!(matches!(config.string("gone"), Ok(None)));
        assert!(matches!(config.string("missing"), Ok(None)));
        assert!(Config::parse("").is_ok());
    }

    #[test]
    fn wrong_types_name_the_key() {
        let config = config(r#"{"args": "x", "list": ["a", 1], "env": {"K": 2}}"#);
        let message = |result: Result<_, ProviderError>| match result {
            Err(ProviderError::InvalidInput(message)) => message,
            other => panic!(
                "expected invalid-input, got {:?}",
                other.map(|_: Option<()>| ())
            ),
        };
        assert_eq!(
            message(config.string_list("args").map(|_| None)),
            "config.args must be an array of strings, not a string"
        );
        assert_eq!(
            message(config.string_list("list").map(|_| None)),
            "config.list must be an array of strings, but item 1 is a number"
        );
        assert_eq!(
            message(config.string_map("env").map(|_| None)),
            "config.env.K must be a string, not a number"
        );
        assert!(matches!(
            Config::parse("[1]"),
            Err(ProviderError::InvalidInput(_))
        ));
        assert!(matches!(
            Config::parse("{"),
            Err(ProviderError::InvalidInput(_))
        ));
    }
}
