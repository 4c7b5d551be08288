//! Small state persisted by the host with the environment record: the resource
//! id and a few key/values.

use crate::ProviderError;
use crate::bindings::tether::provider::state as raw;

/// Records the resource id, so a later start (after a stop or a host restart) is
/// handed it back in `init-vars.resource-id` and can reconnect.
pub fn set_resource_id(id: &str) {
    raw::set_resource_id(id);
}

/// Reads a persisted value.
pub fn get(key: &str) -> Option<String> {
    raw::get(key)
}

/// Persists a value; the host caps the size of keys and values.
pub fn set(key: &str, value: &str) -> Result<(), ProviderError> {
    raw::set(key, value)
}

/// Removes a persisted value.
pub fn remove(key: &str) {
    raw::remove(key);
}
