//! The environment's runtime: sending it JSON messages, and the runtime program a
//! start's config asks for ([`RuntimeSpec`]).

use crate::bindings::tether::provider::runtime as raw;
use crate::{InitVars, ProviderError};

/// The runtime program when `config.command` is absent: the host binary itself.
pub const DEFAULT_COMMAND: &str = "tether";
/// The runtime's arguments when `config.args` is absent.
pub const DEFAULT_ARGS: [&str; 1] = ["runtime"];
/// Variables a provider sets for the runtime; `config.env` may not set them.
pub const RESERVED_ENV: [&str; 3] = [
    "TETHER_RUNTIME_URL",
    "TETHER_RUNTIME_TOKEN",
    "TETHER_ENVIRONMENT_ID",
];

/// The runtime a start's config asks for: `command`, `args` and `env`, validated.
#[derive(Debug, Clone)]
pub struct RuntimeSpec {
    /// The program (default [`DEFAULT_COMMAND`]).
    pub command: String,
    /// Its arguments (default [`DEFAULT_ARGS`]).
    pub args: Vec<String>,
    /// Extra variables; never one of [`RESERVED_ENV`].
    pub env: Vec<(String, String)>,
}

impl RuntimeSpec {
    /// Reads and checks `command`, `args` and `env` from the start's config.
    pub fn from_init(init: &InitVars) -> Result<Self, ProviderError> {
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

/// Sends one JSON message (as text) to the runtime; the host queues it while the
/// runtime is not connected.
pub fn send(message: &str) -> Result<(), ProviderError> {
    raw::send(message)
}

/// Serialises `message` and sends it to the runtime.
pub fn send_json(message: &serde_json::Value) -> Result<(), ProviderError> {
    raw::send(&message.to_string())
}

/// The runtime's copy of an app's `providerAgentStart`: the same fields with `type`
/// `agentStart` and without the app's `requestId`, so the app gets one answer to its
/// request (the provider's) and the runtime's own messages about the start are not
/// mistaken for a second one.
pub fn agent_start(message: &str) -> Result<String, ProviderError> {
    let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(message)
        .map_err(|e| {
            ProviderError::invalid_input(format!("an agent start must be a JSON object: {e}"))
        })?;
    fields.insert("type".into(), "agentStart".into());
    fields.remove("requestId");
    Ok(serde_json::Value::Object(fields).to_string())
}

/// Whether the runtime is connected now.
pub fn is_connected() -> bool {
    raw::is_connected()
}
