//! The built-in `http-sandbox` provider: the environment's resource is a sandbox
//! behind an HTTP API in the shape of hosted sandbox services (create, get, delete
//! a sandbox; start and stop a process in it), and the runtime runs in it.
//!
//! `settings` reads the merged config (API URL and key, usually the operator's;
//! the runtime command), `api` speaks the API through the SDK's brokered HTTP
//! client, and this file owns the lifecycle: a start reuses the persisted sandbox
//! while the API still has it and creates one only when it is gone, saying so in
//! the log, the metadata and the record (`recreatedFrom`); a stop stops the
//! runtime and keeps the sandbox; a destroy deletes the sandbox, also from a fresh
//! instance for a stopped environment.

mod api;
mod settings;

use tether_provider_sdk::{
    Capabilities, Entry, Health, InitVars, Provider, ProviderError, ProviderInfo, StartResult,
    init_vars, log, state,
};

use crate::api::{Sandbox, SandboxApi};
use tether_provider_sdk::runtime::RuntimeSpec;

use crate::settings::{ApiSettings, CONFIG_SCHEMA};

/// State key naming the sandbox the current one replaced, when it was recreated.
const RECREATED_FROM: &str = "recreatedFrom";

/// The `http-sandbox` provider: what the running start holds.
#[derive(Default)]
struct HttpSandbox {
    session: Option<Session>,
}

/// The sandbox and runtime process of the current start.
struct Session {
    api: ApiSettings,
    sandbox_id: String,
    process_id: String,
}

/// How the start came by its sandbox.
enum Origin {
    /// There was none: created.
    Created,
    /// The persisted one is alive: reused.
    Reused,
    /// The persisted one (this id) is gone: created another.
    Recreated(String),
}

impl HttpSandbox {
    /// Stops the runtime this instance started, if any; the sandbox stays.
    fn stop_runtime(&mut self) -> Result<(), ProviderError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let api = SandboxApi::new(&session.api);
        let (sandbox, process) = (&session.sandbox_id, &session.process_id);
        if api.stop_process(sandbox, process)? {
            log::info(format!(
                "stopped runtime process {process} in sandbox {sandbox}"
            ));
        } else {
            log::info(format!(
                "runtime process {process} of sandbox {sandbox} was already gone"
            ));
        }
        Ok(())
    }

    /// The persisted sandbox if the API still has it, else a new one.
    fn obtain_sandbox(
        api: &SandboxApi<'_>,
        settings: &ApiSettings,
        init: &InitVars,
    ) -> Result<(Sandbox, Origin), ProviderError> {
        let Some(previous) = init.resource_id.as_deref().filter(|id| !id.is_empty()) else {
            let sandbox = api.create(init)?;
            log::info(format!("created sandbox {}", sandbox.id));
            return Ok((sandbox, Origin::Created));
        };
        let why_gone = match api.get(previous)? {
            Some(sandbox) if !settings.is_gone(&sandbox.status) => {
                log::info(format!(
                    "reusing sandbox {previous} (status {})",
                    sandbox.status
                ));
                return Ok((sandbox, Origin::Reused));
            }
            Some(sandbox) => format!("its status is {:?}", sandbox.status),
            None => "the API no longer knows it (404)".to_owned(),
        };
        let sandbox = api.create(init)?;
        log::warn(format!(
            "sandbox {previous} is gone ({why_gone}): created sandbox {} in its place",
            sandbox.id
        ));
        Ok((sandbox, Origin::Recreated(previous.to_owned())))
    }
}

impl Provider for HttpSandbox {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "http-sandbox".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Runs the environment's runtime in a remote sandbox created over an HTTP sandbox API; reconnects to the same sandbox while it lives."
                .to_owned(),
            capabilities: Capabilities {
                commands: Vec::new(),
                // The API's address is the operator's choice: the grant narrows this to it.
                urls: vec!["http://*:*".to_owned(), "https://*:*".to_owned()],
                directories: Vec::new(),
            },
            config_schema: CONFIG_SCHEMA.to_owned(),
            message_types: Vec::new(),
        }
    }

    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError> {
        let settings = ApiSettings::from_init(init)?;
        let runtime = RuntimeSpec::from_init(init)?;
        // A runtime of an earlier start on this instance holds an older token.
        if let Err(err) = self.stop_runtime() {
            log::warn(format!(
                "could not stop the previous runtime: {}",
                err.message()
            ));
        }
        let api = SandboxApi::new(&settings);
        let (sandbox, origin) = Self::obtain_sandbox(&api, &settings, init)?;
        // Persisted before anything else can fail, so a retry reuses this sandbox.
        state::set_resource_id(&sandbox.id);
        match &origin {
            Origin::Recreated(previous) => state::set(RECREATED_FROM, previous)?,
            Origin::Created => state::remove(RECREATED_FROM),
            Origin::Reused => {}
        }

        // Runtimes of earlier starts (a host that crashed, a stop that never came)
        // hold tokens of older generations: they go before the new one starts.
        for stale in &sandbox.processes {
            match api.stop_process(&sandbox.id, &stale.id) {
                Ok(_) => log::info(format!(
                    "removed process {} ({}) left in sandbox {} by an earlier start",
                    stale.id, stale.status, sandbox.id
                )),
                Err(err) => log::warn(format!(
                    "could not remove process {} of sandbox {}: {}",
                    stale.id,
                    sandbox.id,
                    err.message()
                )),
            }
        }

        let mut env = vec![
            ("TETHER_RUNTIME_URL".to_owned(), init.runtime_url.clone()),
            (
                "TETHER_RUNTIME_TOKEN".to_owned(),
                init.runtime_token.clone(),
            ),
            (
                "TETHER_ENVIRONMENT_ID".to_owned(),
                init.environment_id.clone(),
            ),
        ];
        env.extend(runtime.env.iter().cloned());
        let process = api.start_process(&sandbox.id, &runtime.command, &runtime.args, &env)?;
        log::info(format!(
            "runtime {} started in sandbox {} (process {})",
            runtime.command, sandbox.id, process.id
        ));

        let mut metadata = vec![
            Entry::new("sandboxStatus", sandbox.status.clone()),
            Entry::new("processId", process.id.clone()),
        ];
        match &origin {
            Origin::Created => metadata.push(Entry::new("sandbox", "created")),
            Origin::Reused => metadata.push(Entry::new("sandbox", "reused")),
            Origin::Recreated(previous) => {
                metadata.push(Entry::new("sandbox", "recreated"));
                metadata.push(Entry::new("recreated", "true"));
                metadata.push(Entry::new("previousSandboxId", previous.clone()));
            }
        }
        self.session = Some(Session {
            api: settings,
            sandbox_id: sandbox.id.clone(),
            process_id: process.id,
        });
        Ok(StartResult {
            resource_id: sandbox.id,
            workspace_path: sandbox.workdir.unwrap_or_default(),
            metadata,
        })
    }

    fn teardown(&mut self) -> Result<(), ProviderError> {
        self.stop_runtime()
    }

    fn destroy(&mut self) -> Result<(), ProviderError> {
        // May run on a fresh instance: the init vars name the sandbox and the API.
        let Some(init) = init_vars() else {
            return Err(ProviderError::failed(
                "the host named no environment to remove",
            ));
        };
        let Some(id) = init.resource_id.as_deref().filter(|id| !id.is_empty()) else {
            log::info("no sandbox was ever created: nothing to delete");
            return Ok(());
        };
        let settings = ApiSettings::from_init(&init)?;
        if SandboxApi::new(&settings).delete(id)? {
            log::info(format!("deleted sandbox {id}"));
        } else {
            log::info(format!("sandbox {id} was already gone"));
        }
        Ok(())
    }

    fn check_health(&mut self) -> Health {
        let Some(session) = &self.session else {
            return Health::unhealthy("no sandbox: the environment is not started");
        };
        let (sandbox_id, process_id) = (&session.sandbox_id, &session.process_id);
        let sandbox = match SandboxApi::new(&session.api).get(sandbox_id) {
            Ok(Some(sandbox)) => sandbox,
            Ok(None) => {
                return Health::unhealthy(format!(
                    "sandbox {sandbox_id} is gone (the API answers 404)"
                ));
            }
            Err(err) => {
                return Health::unhealthy(format!("sandbox API: {}", err.message()));
            }
        };
        if session.api.is_gone(&sandbox.status) {
            return Health::unhealthy(format!("sandbox {sandbox_id} is {}", sandbox.status));
        }
        match sandbox.process(process_id) {
            Some(process) if process.is_running() => Health::healthy(),
            Some(process) => Health::unhealthy(format!(
                "the runtime (process {process_id}) in sandbox {sandbox_id} {}",
                process.ended.as_deref().unwrap_or("has ended")
            )),
            None => Health::unhealthy(format!(
                "the runtime (process {process_id}) is no longer in sandbox {sandbox_id}"
            )),
        }
    }

    fn read_file(&mut self, path: String) -> Result<String, ProviderError> {
        Err(remote_files(&path))
    }

    fn write_file(&mut self, path: String, content: String) -> Result<(), ProviderError> {
        let _ = content;
        Err(remote_files(&path))
    }

    fn delete_file(&mut self, path: String) -> Result<(), ProviderError> {
        Err(remote_files(&path))
    }

    fn create_folder(&mut self, path: String) -> Result<(), ProviderError> {
        Err(remote_files(&path))
    }

    fn rename_item(&mut self, old_path: String, new_path: String) -> Result<(), ProviderError> {
        let _ = new_path;
        Err(remote_files(&old_path))
    }
}

/// The answer to file requests: the files live in the remote sandbox, where only
/// the runtime reaches them.
fn remote_files(path: &str) -> ProviderError {
    ProviderError::unsupported(format!(
        "{path}: the files of an http-sandbox environment live in the remote sandbox; \
         ask its runtime"
    ))
}

tether_provider_sdk::export_provider!(HttpSandbox);
