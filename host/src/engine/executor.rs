//! The guest executor: a tokio runtime of its own on which guest code runs
//! (instantiation, `info()` probes, and every call that waits or is preempted; see
//! [`super::handle`] for the one step a call takes in its caller's task), apart from the
//! runtime that serves the API and the relay.
//!
//! Guests are preemptible only at epoch ticks, and a tokio worker running a guest
//! serves nothing else until the guest yields. On the shared runtime three spinning
//! guests on two cores froze `/healthz` for a minute. Here they cannot: the executor
//! has fewer workers than the machine has cores (`limits.guest_threads`, by default one
//! less, at least one), so the
//! host's runtime always has a core to itself whatever the guests do; and every guest
//! yields to the executor at every epoch tick while it runs (see
//! [`super::instance::configured_store`]), so one spinning guest delays the other
//! environments' calls by a tick, not by its whole deadline.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use super::EngineError;
use super::inline::InlineBudget;

/// The runtime guests run on; shut down (without waiting) when the engine goes.
pub(crate) struct GuestExecutor {
    runtime: Option<Runtime>,
    handle: Handle,
    /// The meter on guest code run in callers' tasks instead of here.
    inline: Arc<InlineBudget>,
}

impl GuestExecutor {
    /// A runtime with `threads` workers named `tether-guest`; with `0`, the caller's
    /// runtime (guests share it with everything else, as before this executor existed:
    /// for measuring what it buys, never for serving).
    pub(crate) fn new(threads: usize) -> Result<Self, EngineError> {
        if threads == 0 {
            let handle = Handle::try_current().map_err(|e| {
                EngineError::Setup(format!("guest_threads = 0 needs a running runtime: {e}"))
            })?;
            return Ok(Self {
                runtime: None,
                handle,
                inline: Default::default(),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("tether-guest")
            .enable_all()
            .build()
            .map_err(|e| EngineError::Setup(format!("starting the guest executor: {e}")))?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
            inline: Default::default(),
        })
    }

    /// The runtime's handle, for spawning from where the executor is not at hand.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The meter on guest code run in callers' tasks (shared by every instance).
    pub(crate) fn inline_budget(&self) -> &Arc<InlineBudget> {
        &self.inline
    }

    /// Runs `task` on the guest executor.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for GuestExecutor {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another runtime (where
        // engines are dropped in tests); instances still on it are dropped with it.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
