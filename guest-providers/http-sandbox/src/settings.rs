//! The merged config of a start, validated: which sandbox API to call with which
//! key, and which runtime to start in the sandbox.
//!
//! The host merges the operator's `[providers.http-sandbox] config` over the
//! environment's own config, so `apiUrl` and `apiKey` normally come from the
//! operator and are never stored with the environment.

use tether_provider_sdk::{InitVars, ProviderError};

/// Statuses that mean a sandbox no longer exists, when `config.goneStatuses` is absent.
const DEFAULT_GONE: [&str; 1] = ["deleted"];

/// JSON Schema of the config this provider understands.
pub(crate) const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "http-sandbox config (operator config merged over the environment's)",
  "type": "object",
  "required": ["apiUrl", "apiKey"],
  "properties": {
    "apiUrl": {
      "type": "string",
      "description": "Base URL of the sandbox API, with its version prefix, e.g. http://127.0.0.1:8790/v1 (the operator must grant its scheme://host:port)."
    },
    "apiKey": {
      "type": "string",
      "description": "Bearer API key; set it in the operator's [providers.http-sandbox] config, not in the environment."
    },
    "command": {
      "type": "string",
      "description": "Runtime program the sandbox runs (the sandbox service decides what it allows).",
      "default": "tether"
    },
    "args": {
      "type": "array",
      "items": { "type": "string" },
      "default": ["runtime"]
    },
    "env": {
      "type": "object",
      "additionalProperties": { "type": "string" },
      "description": "Extra variables for the runtime (TETHER_RUNTIME_URL, TETHER_RUNTIME_TOKEN and TETHER_ENVIRONMENT_ID are set by the provider)."
    },
    "goneStatuses": {
      "type": "array",
      "items": { "type": "string" },
      "description": "Sandbox statuses that mean the sandbox is gone and must be recreated (a 404 always does).",
      "default": ["deleted"]
    }
  }
}"#;

/// Where the sandbox API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub(crate) struct ApiSettings {
    /// Base URL without a trailing slash; API paths are appended to it.
    pub(crate) base_url: String,
    /// The bearer key.
    pub(crate) api_key: String,
    /// Statuses that mean "gone".
    pub(crate) gone_statuses: Vec<String>,
}

impl ApiSettings {
    /// Reads `apiUrl`, `apiKey` and `goneStatuses`.
    pub(crate) fn from_init(init: &InitVars) -> Result<Self, ProviderError> {
        let config = init.config()?;
        let base_url = config.string("apiUrl")?.ok_or_else(|| {
            ProviderError::invalid_input(
                "config.apiUrl is missing: the operator sets it in [providers.http-sandbox] config",
            )
        })?;
        let base_url = base_url.trim().trim_end_matches('/').to_owned();
        let scheme_ok = base_url.starts_with("http://") || base_url.starts_with("https://");
        if !scheme_ok || base_url.len() <= "https://".len() {
            return Err(ProviderError::invalid_input(format!(
                "config.apiUrl must be an http:// or https:// URL, not {base_url:?}"
            )));
        }
        let api_key = config.string("apiKey")?.unwrap_or_default();
        if api_key.trim().is_empty() {
            return Err(ProviderError::invalid_input(
                "config.apiKey is missing: the operator sets it in [providers.http-sandbox] config",
            ));
        }
        let gone_statuses = config
            .string_list("goneStatuses")?
            .unwrap_or_else(|| DEFAULT_GONE.map(str::to_owned).to_vec());
        Ok(Self {
            base_url,
            api_key,
            gone_statuses,
        })
    }

    /// Whether a sandbox in `status` counts as gone.
    pub(crate) fn is_gone(&self, status: &str) -> bool {
        self.gone_statuses.iter().any(|gone| gone == status)
    }
}
