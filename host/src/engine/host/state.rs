//! `tether:provider/state`: the resource id and small key/values kept in the record.
//!
//! The instance writes through a [`crate::engine::StateWriter`], which the lifecycle
//! layer persists; changes coalesce there, so a flood of calls costs no memory.

use crate::engine::bindings::state::Host;
use crate::engine::bindings::types::ProviderError;
use crate::engine::instance::HostState;
use crate::engine::types::MAX_RESOURCE_ID;

/// Longest key, in bytes.
pub(crate) const MAX_KEY: usize = 128;
/// Longest value, in bytes.
pub(crate) const MAX_VALUE: usize = 4096;

impl Host for HostState {
    async fn set_resource_id(&mut self, id: String) -> wasmtime::Result<()> {
        // The import has no error to return: an id over the limit is dropped, not
        // cut (a cut id would name another resource), and the drop is logged.
        if id.len() <= MAX_RESOURCE_ID {
            self.state.set_resource_id(id);
        } else if self.log_budget.take(std::time::Instant::now()).is_some() {
            // Counted against the provider's log budget: a flood logs a burst, not a line
            // per call.
            tracing::warn!(env = %self.env_id, provider = %self.provider, bytes = id.len(),
                "set-resource-id over {MAX_RESOURCE_ID} bytes ignored");
        }
        Ok(())
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.state.get(&key))
    }

    async fn set(
        &mut self,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), ProviderError>> {
        if key.is_empty() || key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Ok(Err(ProviderError::InvalidInput(format!(
                "state keys must be 1..={MAX_KEY} bytes and values at most {MAX_VALUE} bytes"
            ))));
        }
        if !self.state.set(key, value, self.max_state_entries) {
            return Ok(Err(ProviderError::Denied(format!(
                "at most {} state entries per environment",
                self.max_state_entries
            ))));
        }
        Ok(Ok(()))
    }

    async fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        self.state.remove(&key);
        Ok(())
    }
}
