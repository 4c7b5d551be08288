//! Attacks through a granted spawn: variables the provider sets for its child
//! (`spawn-env`: `LD_PRELOAD`, `PATH`, …), run to the end so the test can read
//! what the child really got from its output.

use tether_provider_sdk::ProviderError;
use tether_provider_sdk::process::Command;
use tether_provider_sdk::serde_json::Value;

/// Spawns `config.program config.args...` with `config.env` (an object of
/// strings) set, waits for it and returns its exit and output tail.
pub(crate) fn spawn_env(config: &Value) -> Result<String, ProviderError> {
    let program = config
        .get("program")
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::invalid_input("config.program is required"))?;
    let args: Vec<String> = (config.get("args").and_then(Value::as_array))
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut command = Command::new(program).args(args);
    if let Some(vars) = config.get("env").and_then(Value::as_object) {
        for (key, value) in vars {
            command = command.env(key.as_str(), value.as_str().unwrap_or_default());
        }
    }
    let child = command.spawn()?;
    let status = child.wait();
    Ok(format!("{status}; output: {}", child.output_tail()))
}
