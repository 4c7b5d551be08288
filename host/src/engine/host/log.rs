//! `tether:provider/log`: provider log lines in the host's log, tagged with the
//! environment and provider, and cut to a bounded length.

use crate::engine::bindings::log::{Host, Level};
use crate::engine::instance::HostState;

/// Longest log message kept, in bytes.
const MAX_MESSAGE: usize = 4096;

impl Host for HostState {
    async fn log(&mut self, level: Level, mut message: String) -> wasmtime::Result<()> {
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" …");
        }
        let (env, provider) = (&self.env_id, &self.provider);
        match level {
            Level::Trace => tracing::trace!(env = %env, provider = %provider, "{message}"),
            Level::Debug => tracing::debug!(env = %env, provider = %provider, "{message}"),
            Level::Info => tracing::info!(env = %env, provider = %provider, "{message}"),
            Level::Warn => tracing::warn!(env = %env, provider = %provider, "{message}"),
            Level::Error => tracing::error!(env = %env, provider = %provider, "{message}"),
        }
        Ok(())
    }
}
