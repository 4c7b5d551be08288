//! `tether:provider@0.1.0`: its bindings, its types converted up to the newest
//! version (and the few that flow down, converted down), and its imports forwarded to
//! the newest host implementation. Everything that knows 0.1.0 exists is here or in
//! [`crate::engine::dispatch`].

use wasmtime::component::Resource;

use crate::broker::process::Child;
use crate::engine::instance::HostState;
use crate::engine::types::{self as host, ProviderFailure};

wasmtime::component::bindgen!({
    path: "../wit/tether-provider@0.1.0",
    world: "tether:provider/provider-world",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "tether:provider/process.child": crate::broker::process::Child,
    },
});

use self::tether::provider::{log, process, runtime, state, types};
use super::{
    log as new_log, process as new_process, runtime as new_runtime, state as new_state,
    types as new,
};

// Up: what a 0.1.0 guest returns, as the newest types.

impl From<types::ProviderError> for new::ProviderError {
    fn from(e: types::ProviderError) -> Self {
        use types::ProviderError as Old;
        match e {
            Old::InvalidInput(m) => Self::InvalidInput(m),
            Old::NotFound(m) => Self::NotFound(m),
            Old::Denied(m) => Self::Denied(m),
            Old::Unsupported(m) => Self::Unsupported(m),
            Old::Failed(m) => Self::Failed(m),
        }
    }
}

impl From<types::ProviderInfo> for new::ProviderInfo {
    fn from(i: types::ProviderInfo) -> Self {
        Self {
            name: i.name,
            version: i.version,
            description: i.description,
            capabilities: new::Capabilities {
                commands: (i.capabilities.commands.into_iter())
                    .map(|c| new::CommandRequest {
                        program: c.program,
                        args: c.args,
                    })
                    .collect(),
                urls: i.capabilities.urls,
                directories: i.capabilities.directories,
            },
            config_schema: i.config_schema,
            message_types: i.message_types,
        }
    }
}

impl From<types::Entry> for new::Entry {
    fn from(e: types::Entry) -> Self {
        Self {
            key: e.key,
            value: e.value,
        }
    }
}

impl From<types::StartResult> for new::StartResult {
    fn from(r: types::StartResult) -> Self {
        Self {
            resource_id: r.resource_id,
            workspace_path: r.workspace_path,
            metadata: r.metadata.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<types::Health> for new::Health {
    fn from(h: types::Health) -> Self {
        use types::HealthState as Old;
        let state = match h.state {
            Old::Healthy => new::HealthState::Healthy,
            Old::Degraded => new::HealthState::Degraded,
            Old::Unhealthy => new::HealthState::Unhealthy,
        };
        Self {
            state,
            detail: h.detail,
        }
    }
}

impl From<types::DiffFile> for new::DiffFile {
    fn from(d: types::DiffFile) -> Self {
        use types::ChangeKind as Old;
        let change = match d.change {
            Old::Added => new::ChangeKind::Added,
            Old::Modified => new::ChangeKind::Modified,
            Old::Deleted => new::ChangeKind::Deleted,
            Old::Renamed => new::ChangeKind::Renamed,
        };
        Self {
            path: d.path,
            change,
            diff: d.diff,
        }
    }
}

impl From<process::SpawnRequest> for new_process::SpawnRequest {
    fn from(r: process::SpawnRequest) -> Self {
        Self {
            program: r.program,
            args: r.args,
            env: r.env.into_iter().map(Into::into).collect(),
            cwd: r.cwd,
        }
    }
}

impl From<log::Level> for new_log::Level {
    fn from(l: log::Level) -> Self {
        match l {
            log::Level::Trace => Self::Trace,
            log::Level::Debug => Self::Debug,
            log::Level::Info => Self::Info,
            log::Level::Warn => Self::Warn,
            log::Level::Error => Self::Error,
        }
    }
}

// Down: what the host hands a 0.1.0 guest.

impl From<new::InitVars> for types::InitVars {
    fn from(v: new::InitVars) -> Self {
        Self {
            environment_id: v.environment_id,
            environment_name: v.environment_name,
            config: v.config,
            resource_id: v.resource_id,
            runtime_url: v.runtime_url,
            runtime_token: v.runtime_token,
            project_path: v.project_path,
            workspace_dir: v.workspace_dir,
            workspace_host_path: v.workspace_host_path,
        }
    }
}

impl From<new::ProviderError> for types::ProviderError {
    fn from(e: new::ProviderError) -> Self {
        use new::ProviderError as New;
        match e {
            New::InvalidInput(m) => Self::InvalidInput(m),
            New::NotFound(m) => Self::NotFound(m),
            New::Denied(m) => Self::Denied(m),
            New::Unsupported(m) => Self::Unsupported(m),
            New::Failed(m) => Self::Failed(m),
        }
    }
}

impl From<new_process::ExitStatus> for process::ExitStatus {
    fn from(s: new_process::ExitStatus) -> Self {
        match s {
            new_process::ExitStatus::Code(c) => Self::Code(c),
            new_process::ExitStatus::Signal(s) => Self::Signal(s),
        }
    }
}

// The host's own types, through the newest: what `dispatch` converts with `Into`.

impl From<types::ProviderError> for ProviderFailure {
    fn from(e: types::ProviderError) -> Self {
        new::ProviderError::from(e).into()
    }
}

impl From<types::StartResult> for host::StartOutcome {
    fn from(r: types::StartResult) -> Self {
        new::StartResult::from(r).into()
    }
}

impl From<types::Health> for host::HealthReport {
    fn from(h: types::Health) -> Self {
        new::Health::from(h).into()
    }
}

impl From<types::DiffFile> for host::DiffFile {
    fn from(d: types::DiffFile) -> Self {
        new::DiffFile::from(d).into()
    }
}

impl From<host::InitVars> for types::InitVars {
    fn from(v: host::InitVars) -> Self {
        new::InitVars::from(v).into()
    }
}

// Imports: the 0.1.0 interfaces are the newest ones under older names.

impl types::Host for HostState {}

impl process::Host for HostState {
    async fn spawn(
        &mut self,
        request: process::SpawnRequest,
    ) -> wasmtime::Result<Result<Resource<Child>, types::ProviderError>> {
        let spawned = <Self as new_process::Host>::spawn(self, request.into()).await?;
        Ok(spawned.map_err(Into::into))
    }
}

impl process::HostChild for HostState {
    async fn pid(&mut self, child: Resource<Child>) -> wasmtime::Result<u32> {
        <Self as new_process::HostChild>::pid(self, child).await
    }

    async fn try_wait(
        &mut self,
        child: Resource<Child>,
    ) -> wasmtime::Result<Option<process::ExitStatus>> {
        let status = <Self as new_process::HostChild>::try_wait(self, child).await?;
        Ok(status.map(Into::into))
    }

    async fn wait(&mut self, child: Resource<Child>) -> wasmtime::Result<process::ExitStatus> {
        let status = <Self as new_process::HostChild>::wait(self, child).await?;
        Ok(status.into())
    }

    async fn kill(&mut self, child: Resource<Child>) -> wasmtime::Result<()> {
        <Self as new_process::HostChild>::kill(self, child).await
    }

    async fn output_tail(&mut self, child: Resource<Child>) -> wasmtime::Result<String> {
        <Self as new_process::HostChild>::output_tail(self, child).await
    }

    async fn drop(&mut self, child: Resource<Child>) -> wasmtime::Result<()> {
        <Self as new_process::HostChild>::drop(self, child).await
    }
}

impl runtime::Host for HostState {
    async fn send(
        &mut self,
        message: String,
    ) -> wasmtime::Result<Result<(), types::ProviderError>> {
        let sent = <Self as new_runtime::Host>::send(self, message).await?;
        Ok(sent.map_err(Into::into))
    }

    async fn is_connected(&mut self) -> wasmtime::Result<bool> {
        <Self as new_runtime::Host>::is_connected(self).await
    }
}

impl state::Host for HostState {
    async fn set_resource_id(&mut self, id: String) -> wasmtime::Result<()> {
        <Self as new_state::Host>::set_resource_id(self, id).await
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        <Self as new_state::Host>::get(self, key).await
    }

    async fn set(
        &mut self,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), types::ProviderError>> {
        let set = <Self as new_state::Host>::set(self, key, value).await?;
        Ok(set.map_err(Into::into))
    }

    async fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        <Self as new_state::Host>::remove(self, key).await
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        <Self as new_log::Host>::log(self, level.into(), message).await
    }
}
