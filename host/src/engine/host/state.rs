//! `tether:provider/state`: the resource id and small key/values kept in the record.
//!
//! The instance keeps its own copy for reads and emits an event per change, which
//! the lifecycle layer persists.

use crate::engine::bindings::state::Host;
use crate::engine::bindings::types::ProviderError;
use crate::engine::instance::HostState;
use crate::engine::types::ProviderEvent;

/// Longest key, in bytes.
const MAX_KEY: usize = 128;
/// Longest value, in bytes.
const MAX_VALUE: usize = 4096;

impl Host for HostState {
    async fn set_resource_id(&mut self, id: String) -> wasmtime::Result<()> {
        if id.len() <= MAX_VALUE {
            self.emit(ProviderEvent::ResourceId(id));
        } else {
            tracing::warn!(env = %self.env_id, "resource id over {MAX_VALUE} bytes ignored");
        }
        Ok(())
    }

    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.state.get(&key).cloned())
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
        if !self.state.contains_key(&key) && self.state.len() >= self.max_state_entries {
            return Ok(Err(ProviderError::Denied(format!(
                "at most {} state entries per environment",
                self.max_state_entries
            ))));
        }
        self.state.insert(key.clone(), value.clone());
        self.emit(ProviderEvent::StateSet(key, value));
        Ok(Ok(()))
    }

    async fn remove(&mut self, key: String) -> wasmtime::Result<()> {
        if self.state.remove(&key).is_some() {
            self.emit(ProviderEvent::StateRemoved(key));
        }
        Ok(())
    }
}
