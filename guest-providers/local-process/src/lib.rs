//! The built-in `local-process` provider: the environment's resource is its
//! workspace directory on the host, and the runtime runs there as a local process.
//!
//! The host creates the workspace at `<data-dir>/.codebolt/environments/<name>`,
//! preopens it for this component as `init.workspace-dir` and names its host path
//! in `init.workspace-host-path`, which is also the resource id. This crate owns
//! starting and watching the runtime process, and emptying the workspace when the
//! environment is deleted. File handlers are the SDK's defaults.

use tether_provider_sdk::process::{Child, Command};
use tether_provider_sdk::runtime::{DEFAULT_ARGS, DEFAULT_COMMAND, RuntimeSpec};
use tether_provider_sdk::{
    Capabilities, CommandRequest, Entry, Health, InitVars, Provider, ProviderError, ProviderInfo,
    StartResult, fs, log, state,
};

/// How much of the runtime's last output a health report quotes.
const OUTPUT_TAIL_CHARS: usize = 500;

/// JSON Schema of the environment config this provider understands.
const CONFIG_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "local-process environment config",
  "type": "object",
  "properties": {
    "command": {
      "type": "string",
      "description": "Runtime program to run in the workspace (must be granted by the operator).",
      "default": "tether"
    },
    "args": {
      "type": "array",
      "items": { "type": "string" },
      "description": "Arguments for the runtime program.",
      "default": ["runtime"]
    },
    "env": {
      "type": "object",
      "additionalProperties": { "type": "string" },
      "description": "Extra environment variables for the runtime (TETHER_RUNTIME_URL, TETHER_RUNTIME_TOKEN and TETHER_ENVIRONMENT_ID are set by the provider)."
    }
  }
}"#;

/// The `local-process` provider: holds the runtime child while the environment runs.
#[derive(Default)]
struct LocalProcess {
    /// The runtime process started by the last successful start.
    child: Option<Child>,
}

impl LocalProcess {
    /// Kills the held runtime, if any, and waits for it to end.
    fn stop_runtime(&mut self) {
        if let Some(child) = self.child.take() {
            let pid = child.pid();
            child.kill();
            let status = child.wait();
            log::info(format!("runtime (pid {pid}) stopped: it {status}"));
        }
    }
}

impl Provider for LocalProcess {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "local-process".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Runs the environment's runtime as a local process in a workspace directory on the host."
                .to_owned(),
            capabilities: Capabilities {
                commands: vec![
                    CommandRequest::new(DEFAULT_COMMAND, DEFAULT_ARGS),
                    // `config.command` may name another runtime; the operator's grant decides.
                    CommandRequest::new("*", ["{any...}"]),
                ],
                urls: Vec::new(),
                directories: Vec::new(),
            },
            config_schema: CONFIG_SCHEMA.to_owned(),
            message_types: Vec::new(),
        }
    }

    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError> {
        // A runtime from an earlier start holds a token of an older generation:
        // whatever this start's outcome, it has to go.
        if self.child.is_some() {
            log::warn("start called while a runtime is still held: stopping it first");
            self.stop_runtime();
        }

        let runtime = RuntimeSpec::from_init(init)?;
        let resource_id = init.workspace_host_path.clone();
        if resource_id.is_empty() {
            return Err(ProviderError::failed(
                "the host gave no workspace host path",
            ));
        }

        match init.resource_id.as_deref() {
            Some(previous) if previous == resource_id => {
                log::info(format!("reusing workspace {resource_id}"));
            }
            Some(previous) => {
                log::info(format!(
                    "previous resource {previous} is gone; using new workspace {resource_id}"
                ));
            }
            None => log::info(format!("using new workspace {resource_id}")),
        }
        state::set_resource_id(&resource_id);

        let child = Command::new(runtime.command.as_str())
            .args(runtime.args)
            .env("TETHER_RUNTIME_URL", init.runtime_url.as_str())
            .env("TETHER_RUNTIME_TOKEN", init.runtime_token.as_str())
            .env("TETHER_ENVIRONMENT_ID", init.environment_id.as_str())
            .envs(runtime.env)
            .spawn()?;
        let pid = child.pid();
        log::info(format!("runtime {} started (pid {pid})", runtime.command));
        self.child = Some(child);

        Ok(StartResult {
            resource_id: resource_id.clone(),
            workspace_path: resource_id,
            metadata: vec![Entry::new("pid", pid.to_string())],
        })
    }

    fn check_health(&mut self) -> Health {
        let Some(child) = &self.child else {
            return Health::unhealthy("runtime not started");
        };
        match child.try_wait() {
            None => Health::healthy(),
            Some(status) => {
                let tail = last_chars(child.output_tail().trim(), OUTPUT_TAIL_CHARS);
                if tail.is_empty() {
                    Health::unhealthy(format!("runtime {status}"))
                } else {
                    Health::unhealthy(format!("runtime {status}: {tail}"))
                }
            }
        }
    }

    fn teardown(&mut self) -> Result<(), ProviderError> {
        self.stop_runtime();
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), ProviderError> {
        let workspace = fs::workspace_dir().map_err(|err| {
            ProviderError::failed(format!("cannot remove the workspace: {}", err.message()))
        })?;
        fs::remove_dir_contents(&workspace)?;
        log::info(format!("emptied workspace {}", workspace.display()));
        Ok(())
    }
}

/// The last `max` characters of `text`, with a leading `…` when something was cut.
fn last_chars(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - max).collect();
    format!("…{}", tail.trim_start())
}

tether_provider_sdk::export_provider!(LocalProcess);
