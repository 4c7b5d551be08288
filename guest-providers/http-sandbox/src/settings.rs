//! The merged config of a start, validated: which sandbox API to call with which
//! key, and which runtime to start in the sandbox.
//!
//! The host merges the operator's `[providers.http-sandbox] config` over the
//! environment's own config, so `apiUrl` and `apiKey` normally come from the
//! operator and are never stored with the environment.

use tether_provider_sdk::{InitVars, ProviderError};

/// Runtime program when `config.command` is absent.
const DEFAULT_COMMAND: &str = "tether";
/// Runtime arguments when `config.args` is absent.
const DEFAULT_ARGS: [&str; 1] = ["runtime"];
/// Statuses that mean a sandbox no longer exists, when `config.goneStatuses` is absent.
const DEFAULT_GONE: [&str; 1] = ["deleted"];
/// Variables the provider sets for the runtime; `config.env` may not override them.
pub(crate) const RESERVED_ENV: [&str; 3] = [
    "TETHER_RUNTIME_URL",
    "TETHER_RUNTIME_TOKEN",
    "TETHER_ENVIRONMENT_ID",
];

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

/// What to run in the sandbox.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeSpec {
    /// The program.
    pub(crate) command: String,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Extra variables, checked against [`RESERVED_ENV`].
    pub(crate) env: Vec<(String, String)>,
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

impl RuntimeSpec {
    /// Reads `command`, `args` and `env`.
    pub(crate) fn from_init(init: &InitVars) -> Result<Self, ProviderError> {
        let config = init.config()?;
        let command = config
            .string("command")?
            .unwrap_or_else(|| DEFAULT_COMMAND.to_owned());
        if command.trim().is_empty() {
            return Err(ProviderError::invalid_input(
                "config.command must not be empty",
            ));
        }
        let args = config
            .string_list("args")?
            .unwrap_or_else(|| DEFAULT_ARGS.map(str::to_owned).to_vec());
        let env = config.string_map("env")?.unwrap_or_default();
        for (key, _) in &env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ProviderError::invalid_input(format!(
                    "config.env has an invalid variable name: {key:?}"
                )));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return Err(ProviderError::invalid_input(format!(
                    "config.env may not set {key}: the provider sets it for the runtime"
                )));
            }
        }
        Ok(Self { command, args, env })
    }
}
