//! Attacks that send the host too much: floods of state calls, oversized errors,
//! metadata and program names, and strings that would forge log lines. Each takes
//! its sizes from the config, so a test can pick them.

use tether_provider_sdk::process::Command;
use tether_provider_sdk::serde_json::Value;
use tether_provider_sdk::{ProviderError, log, state};

/// The attacks this module runs.
pub(crate) const ATTACKS: &[&str] = &[
    "resource-id-flood",
    "state-flood",
    "huge-error",
    "huge-metadata",
    "long-program",
    "forge-log",
];

fn number(config: &Value, key: &str, default: u64) -> usize {
    config.get(key).and_then(Value::as_u64).unwrap_or(default) as usize
}

/// Runs the attack `name` (one of [`ATTACKS`]).
pub(crate) fn run(name: &str, config: &Value) -> Result<String, ProviderError> {
    match name {
        "resource-id-flood" => {
            let (count, bytes) = (
                number(config, "count", 500_000),
                number(config, "bytes", 256),
            );
            let pad = "r".repeat(bytes.saturating_sub(10));
            for i in 0..count {
                state::set_resource_id(&format!("{i:010}{pad}"));
            }
            Ok(format!("set {count} resource ids of {bytes} bytes"))
        }
        "state-flood" => {
            let count = number(config, "count", 200_000);
            let value = "v".repeat(number(config, "bytes", 4096));
            for i in 0..count {
                let key = format!("k{i}");
                state::set(&key, &value)?;
                state::remove(&key);
            }
            state::set("last", "kept")?;
            Ok(format!("set and removed {count} keys"))
        }
        "huge-error" => Err(ProviderError::failed("E".repeat(number(
            config,
            "bytes",
            20 << 20,
        )))),
        "huge-metadata" => Ok("m".repeat(number(config, "bytes", 1 << 20))),
        "long-program" => {
            let (count, bytes) = (
                number(config, "count", 50),
                number(config, "bytes", 1 << 20),
            );
            let program = format!("/bin/{}", "a".repeat(bytes));
            let mut longest = 0;
            for _ in 0..count {
                match Command::new(&program).spawn() {
                    Ok(_) => return Ok(format!("spawned a {bytes}-byte program name")),
                    Err(e) => longest = longest.max(e.message().len()),
                }
            }
            Ok(format!(
                "{count} spawns denied; longest refusal {longest} bytes"
            ))
        }
        "forge-log" => {
            let text = config
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            log::warn(text);
            let _ = Command::new(text).spawn();
            Err(ProviderError::failed(text.to_owned()))
        }
        other => Err(ProviderError::invalid_input(format!(
            "unknown attack {other:?}"
        ))),
    }
}
