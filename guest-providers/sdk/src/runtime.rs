//! The environment's runtime connection: sending it JSON messages.

use crate::ProviderError;
use crate::bindings::tether::provider::runtime as raw;

/// Sends one JSON message (as text) to the runtime; the host queues it while the
/// runtime is not connected.
pub fn send(message: &str) -> Result<(), ProviderError> {
    raw::send(message)
}

/// Serialises `message` and sends it to the runtime.
pub fn send_json(message: &serde_json::Value) -> Result<(), ProviderError> {
    raw::send(&message.to_string())
}

/// Whether the runtime is connected now.
pub fn is_connected() -> bool {
    raw::is_connected()
}
