//! The `handoff` provider, for tests and benchmarks: instead of starting a runtime it
//! writes the runtime URL and token of each start to `runtime.json` in the workspace,
//! so a test (or the relay benchmark) can act as the runtime itself over a plain
//! WebSocket and cut or restore that connection at will. It is never built into the
//! host; it is loaded as a drop-in component.

use tether_provider_sdk::serde_json::json;
use tether_provider_sdk::{
    Capabilities, InitVars, Provider, ProviderError, ProviderInfo, StartResult, fs, log,
};

/// The file each start (re)writes in the workspace.
const HANDOFF_FILE: &str = "runtime.json";

/// Holds nothing: the runtime is whoever reads the hand-off file.
#[derive(Default)]
struct Handoff;

impl Provider for Handoff {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "handoff".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Writes the runtime URL and token to runtime.json in the workspace instead of starting a runtime (tests and benchmarks)."
                .to_owned(),
            capabilities: Capabilities {
                commands: Vec::new(),
                urls: Vec::new(),
                directories: Vec::new(),
            },
            config_schema: r#"{"type": "object"}"#.to_owned(),
            message_types: Vec::new(),
        }
    }

    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError> {
        let workspace = fs::workspace_dir()?;
        let handoff = json!({
            "environmentId": init.environment_id,
            "url": init.runtime_url,
            "token": init.runtime_token,
        });
        // Whole, through handles dropped after: an idle hand-off environment holds no
        // descriptor on the host (the benchmarks run thousands).
        fs::write_whole(
            &workspace.to_string_lossy(),
            HANDOFF_FILE,
            handoff.to_string().as_bytes(),
        )
        .map_err(|e| ProviderError::failed(format!("writing {HANDOFF_FILE}: {}", e.message())))?;
        log::info(format!("runtime credentials handed off in {HANDOFF_FILE}"));
        Ok(StartResult {
            resource_id: init.workspace_host_path.clone(),
            workspace_path: init.workspace_host_path.clone(),
            metadata: Vec::new(),
        })
    }
}

tether_provider_sdk::export_provider!(Handoff);
