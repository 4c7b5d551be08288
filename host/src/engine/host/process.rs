//! `tether:provider/process`: spawning through the broker, and the `child` resource.

use wasmtime::component::Resource;

use crate::broker::process::{Child, Exit, SpawnError, SpawnSpec};
use crate::engine::bindings::process::{ExitStatus, Host, HostChild, SpawnRequest};
use crate::engine::bindings::types::ProviderError;
use crate::engine::instance::HostState;

impl Host for HostState {
    async fn spawn(
        &mut self,
        request: SpawnRequest,
    ) -> wasmtime::Result<Result<Resource<Child>, ProviderError>> {
        let Some(broker) = &self.broker else {
            return Ok(Err(ProviderError::Denied(
                "processes can only be spawned while serving an environment".into(),
            )));
        };
        let spec = SpawnSpec {
            program: request.program,
            args: request.args,
            env: request.env.into_iter().map(|e| (e.key, e.value)).collect(),
            cwd: request.cwd,
        };
        let (program, args) = (spec.program.clone(), spec.args.clone());
        match broker.spawn(spec).await {
            Ok(child) => Ok(Ok(self.table.push(child)?)),
            Err(SpawnError::Denied(denied)) => {
                // The provider's error and the log line both name the key to add.
                let reason = broker
                    .capabilities()
                    .explain_spawn(&denied, &program, &args);
                // Counted against the provider's log budget, so a loop of denied
                // spawns logs a burst, not a line per call.
                if self.log_budget.take(std::time::Instant::now()).is_some() {
                    let program = crate::untrusted::quoted(&program);
                    tracing::warn!(env = %self.env_id, provider = %self.provider, %program, %reason, "spawn denied");
                }
                Ok(Err(ProviderError::Denied(reason)))
            }
            Err(err @ SpawnError::Io { .. }) => Ok(Err(ProviderError::Failed(err.to_string()))),
        }
    }
}

fn exit_status(exit: Exit) -> ExitStatus {
    match exit {
        Exit::Code(c) => ExitStatus::Code(c),
        Exit::Signal(s) => ExitStatus::Signal(s),
    }
}

impl HostChild for HostState {
    async fn pid(&mut self, child: Resource<Child>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&child)?.pid())
    }

    async fn try_wait(&mut self, child: Resource<Child>) -> wasmtime::Result<Option<ExitStatus>> {
        Ok(self.table.get_mut(&child)?.try_wait().map(exit_status))
    }

    async fn wait(&mut self, child: Resource<Child>) -> wasmtime::Result<ExitStatus> {
        Ok(exit_status(self.table.get_mut(&child)?.wait().await))
    }

    async fn kill(&mut self, child: Resource<Child>) -> wasmtime::Result<()> {
        self.table.get_mut(&child)?.kill();
        Ok(())
    }

    async fn output_tail(&mut self, child: Resource<Child>) -> wasmtime::Result<String> {
        Ok(self.table.get(&child)?.output_tail())
    }

    async fn drop(&mut self, child: Resource<Child>) -> wasmtime::Result<()> {
        // Dropping the broker's handle kills the process group.
        self.table.delete(child)?;
        Ok(())
    }
}
