//! Operator config of a provider: `[providers.NAME] config = { ... }` in
//! `tether.toml`, merged over each environment's own config when the host hands
//! it to the provider (start and destroy).
//!
//! It is where secrets such as an API key belong: unlike an environment's
//! `config`, it is never written to `environments.json`, never shown by the API
//! and never logged (its `Debug` names the keys only). The operator's values win
//! over the environment's, as grants do: an API caller cannot redirect a key the
//! operator set to another address.

use std::fmt;

use serde_json::{Map, Value};

/// Config values the operator sets for one provider.
#[derive(Clone, Default, PartialEq)]
pub struct OperatorConfig {
    values: Map<String, Value>,
}

impl OperatorConfig {
    /// Converts the TOML table of `[providers.NAME] config`.
    pub fn from_toml(table: toml::Table) -> Result<Self, String> {
        match serde_json::to_value(table) {
            Ok(Value::Object(values)) => Ok(Self { values }),
            Ok(_) => Err("config must be a table".to_owned()),
            Err(e) => Err(format!("config cannot be expressed as JSON: {e}")),
        }
    }

    /// The keys set (for showing what the operator configured, never the values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// The values set: handed to the provider, never shown.
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }

    /// `environment` with the operator's values laid over it (the operator's win).
    pub fn merged_over(&self, environment: &Map<String, Value>) -> Map<String, Value> {
        let mut merged = environment.clone();
        for (key, value) in &self.values {
            merged.insert(key.clone(), value.clone());
        }
        merged
    }
}

impl fmt::Debug for OperatorConfig {
    /// Names the keys only: values may be secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorConfig")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operator_values_win_and_debug_hides_them() {
        let table: toml::Table =
            toml::from_str("apiUrl = \"http://127.0.0.1:9\"\napiKey = \"s3cret\"\nn = 2\n")
                .unwrap();
        let config = OperatorConfig::from_toml(table).unwrap();
        let env = json!({"apiUrl": "http://elsewhere:80", "command": "x"});
        let merged = config.merged_over(env.as_object().unwrap());
        assert_eq!(merged["apiUrl"], "http://127.0.0.1:9");
        assert_eq!(merged["apiKey"], "s3cret");
        assert_eq!(merged["command"], "x");
        assert_eq!(merged["n"], 2);
        let shown = format!("{config:?}");
        assert!(
            shown.contains("apiKey") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
