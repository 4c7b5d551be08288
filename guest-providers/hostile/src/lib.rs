//! A test-only provider that attacks its host. Its environment `config` picks the
//! attack (`{"attack": "read-passwd"}` etc.); it runs during `on-provider-start`, or
//! on every `on-raw-message` carrying the same JSON (the benchmark uses that).
//!
//! An attack the host contains ends the start with a `denied` error quoting the
//! host's refusal, so the environment lands in `error` with a readable `lastError`;
//! attacks that are limits (spawning many, flooding the log) start successfully and
//! report what they got in the metadata. Attacks that trap (spin, allocate, recurse,
//! panic) never return. Never build this into anything but tests.

mod attacks;
mod disk;
mod floods;
mod http;
mod links;
mod spawn_attacks;

use tether_provider_sdk::process::Child;
use tether_provider_sdk::serde_json::{self, Value};
use tether_provider_sdk::{
    Capabilities, ChangeKind, CommandRequest, DiffFile, Entry, InitVars, Provider, ProviderError,
    ProviderInfo, StartResult,
};

/// The hostile provider; holds the children it managed to spawn.
#[derive(Default)]
struct Hostile {
    children: Vec<Child>,
    /// `spin-health`: start fine, then spin in every `check-health`.
    spin_in_health: bool,
    /// `diff-flood`: answer every `get-diff-files` with this many files, each with an
    /// empty path and diff.
    diff_files: usize,
}

impl Provider for Hostile {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "hostile".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Test-only: attacks the host as its config says.".to_owned(),
            // It asks for everything; only the operator's grant stands between it and
            // the host.
            capabilities: Capabilities {
                commands: vec![CommandRequest::new("*", ["{any...}"])],
                urls: vec![
                    "http://*:*".to_owned(),
                    "https://*:*".to_owned(),
                    "tcp://*:*".to_owned(),
                ],
                directories: vec!["/".to_owned(), "/etc".to_owned()],
            },
            config_schema: r#"{"type":"object","properties":{"attack":{"type":"string"}}}"#
                .to_owned(),
            message_types: vec!["attack".to_owned()],
        }
    }

    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError> {
        let config: Value = serde_json::from_str(&init.config)
            .map_err(|e| ProviderError::invalid_input(format!("config: {e}")))?;
        self.spin_in_health = config.get("attack").and_then(Value::as_str) == Some("spin-health");
        if config.get("attack").and_then(Value::as_str) == Some("diff-flood") {
            let count = config
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(1_000_000);
            self.diff_files = count as usize;
        }
        let outcome = attacks::run(&config, &mut self.children)?;
        Ok(StartResult {
            resource_id: format!("hostile-{}", init.environment_id),
            workspace_path: init.workspace_host_path.clone(),
            metadata: vec![Entry::new("outcome", outcome)],
        })
    }

    fn check_health(&mut self) -> tether_provider_sdk::Health {
        if self.spin_in_health {
            attacks::spin();
        }
        tether_provider_sdk::Health::healthy()
    }

    fn get_diff_files(&mut self) -> Result<Vec<DiffFile>, ProviderError> {
        let empty = || DiffFile {
            path: String::new(),
            change: ChangeKind::Added,
            diff: String::new(),
        };
        Ok(std::iter::repeat_with(empty)
            .take(self.diff_files)
            .collect())
    }

    fn teardown(&mut self) -> Result<(), ProviderError> {
        self.children.clear();
        Ok(())
    }

    fn on_raw_message(&mut self, message: String) -> Result<String, ProviderError> {
        let config: Value = serde_json::from_str(&message)
            .map_err(|e| ProviderError::invalid_input(format!("message: {e}")))?;
        let outcome = attacks::run(&config, &mut self.children)?;
        Ok(Value::String(outcome).to_string())
    }
}

tether_provider_sdk::export_provider!(Hostile);
