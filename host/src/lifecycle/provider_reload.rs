//! Hot reload of drop-in providers: the providers directory is watched, and each burst
//! of changes makes the engine rescan it. Environments need nothing from here: running
//! ones keep the instance they started with, and every start looks its provider up
//! afresh, so a replaced file serves the starts that come after it.

use tracing::Instrument;

use super::Manager;
use crate::engine::{self, DirWatchError};

/// Quiet time after the last event before the directory is rescanned; a copy in
/// progress keeps producing events and is waited out.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

impl Manager {
    /// Watches the providers directory and loads what changes in it until shutdown.
    pub(crate) fn watch_providers(&self) -> Result<(), DirWatchError> {
        let providers = self.shared.providers.clone();
        let (guard, mut signals) = engine::watch_dir(&providers.dir(), DEBOUNCE)?;
        let closing = self.shared.closing.clone();
        self.shared.driver.spawn(
            async move {
                let _guard = guard;
                // Whatever changed between the initial load and the watch starting.
                providers.rescan().await;
                loop {
                    tokio::select! {
                        _ = closing.cancelled() => return,
                        signal = signals.recv() => if signal.is_none() { return },
                    }
                    providers.rescan().await;
                }
            }
            .instrument(tracing::info_span!("providers_watch")),
        );
        Ok(())
    }
}
