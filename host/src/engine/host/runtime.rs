//! `tether:provider/runtime`: messages from the provider to its environment's runtime.

use crate::engine::bindings::runtime::Host;
use crate::engine::bindings::types::ProviderError;
use crate::engine::instance::HostState;

impl Host for HostState {
    async fn send(&mut self, message: String) -> wasmtime::Result<Result<(), ProviderError>> {
        // Checked before it is parsed: no runtime would take it, and a provider may
        // hand over as much as its memory holds.
        let max = self.runtime.max_message_bytes();
        if message.len() > max {
            return Ok(Err(ProviderError::InvalidInput(format!(
                "runtime messages are limited to {max} bytes; this one has {}",
                message.len()
            ))));
        }
        if serde_json::from_str::<serde_json::Value>(&message)
            .map(|v| !v.is_object())
            .unwrap_or(true)
        {
            return Ok(Err(ProviderError::InvalidInput(
                "runtime messages must be JSON objects".into(),
            )));
        }
        Ok(self.runtime.send(message).map_err(ProviderError::Failed))
    }

    async fn is_connected(&mut self) -> wasmtime::Result<bool> {
        Ok(self.runtime.is_connected())
    }
}
