//! The [`Provider`] trait: the Rust counterpart of Codebolt's `BaseProvider`.
//!
//! A provider writes only what is specific to its kind of resource — [`Provider::info`]
//! and [`Provider::setup`] — and inherits working defaults for every other export of
//! the `provider` interface.

use crate::{DiffFile, Health, InitVars, ProviderError, ProviderInfo, StartResult, fs, runtime};

/// A Tether provider.
///
/// The SDK creates one value per component instance with `Default` (an instance
/// serves one environment) and keeps it between calls, so a provider keeps what it
/// holds — child processes, connections — in its own fields.
///
/// Required: [`info`](Provider::info) and [`setup`](Provider::setup). Everything else
/// has a default:
///
/// | export | default |
/// |---|---|
/// | `on-provider-agent-start` | passes it to the runtime as an `agentStart` notice |
/// | `on-provider-stop` | [`teardown`](Provider::teardown) |
/// | `on-close-signal` | [`teardown`](Provider::teardown) |
/// | `on-provider-destroy` | [`teardown`](Provider::teardown), then [`destroy`](Provider::destroy) |
/// | `on-raw-message` | `unsupported` |
/// | `check-health` | healthy |
/// | file handlers | [`crate::fs`] on the workspace directory |
/// | `get-diff-files`, `merge-as-patch` | `unsupported` |
pub trait Provider: Default + 'static {
    /// Describes the provider: name, version, capabilities, config schema.
    fn info(&self) -> ProviderInfo;

    /// Creates the environment's resource, or reconnects to `init.resource_id` if it
    /// still lives, starts the runtime there, and reports the resource.
    ///
    /// The init vars are recorded before this runs ([`crate::init_vars`]), so the
    /// workspace helpers in [`crate::fs`] already work.
    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError>;

    /// Releases what the running environment holds (stops the runtime), keeping the
    /// resource. Default: nothing to release.
    fn teardown(&mut self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Removes the resource for good; runs after [`teardown`](Provider::teardown) when
    /// the environment is deleted. It may run on a fresh instance that saw no
    /// [`setup`](Provider::setup): read what names the resource from
    /// [`crate::init_vars`] (`resource_id`, `config`), not from fields set by `setup`.
    /// Default: nothing to remove.
    fn destroy(&mut self) -> Result<(), ProviderError> {
        Ok(())
    }

    /// `on-provider-agent-start`: hands an agent start (the app's `providerAgentStart`
    /// message) to the runtime as an `agentStart` notice ([`runtime::agent_start`]); the
    /// host answers the app with `{"accepted": true}` once this returns.
    fn on_provider_agent_start(&mut self, message: String) -> Result<(), ProviderError> {
        runtime::send(&runtime::agent_start(&message)?)
    }

    /// `on-provider-stop`: calls [`teardown`](Provider::teardown).
    fn on_provider_stop(&mut self) -> Result<(), ProviderError> {
        self.teardown()
    }

    /// `on-close-signal` (the host is closing): calls [`teardown`](Provider::teardown).
    fn on_close_signal(&mut self) -> Result<(), ProviderError> {
        self.teardown()
    }

    /// `on-provider-destroy` (the environment is deleted): calls
    /// [`teardown`](Provider::teardown), then [`destroy`](Provider::destroy) even if
    /// teardown failed; the first error is returned.
    fn on_provider_destroy(&mut self, init: &InitVars) -> Result<(), ProviderError> {
        let _ = init;
        let stopped = self.teardown();
        let destroyed = self.destroy();
        stopped.and(destroyed)
    }

    /// `on-raw-message`: a message of one of the declared `message-types`; the reply
    /// is a JSON value. Default: `unsupported`.
    fn on_raw_message(&mut self, message: String) -> Result<String, ProviderError> {
        let _ = message;
        Err(ProviderError::unsupported(
            "this provider handles no raw messages",
        ))
    }

    /// `check-health`. Default: healthy.
    fn check_health(&mut self) -> Health {
        Health::healthy()
    }

    /// `read-file`. Default: [`fs::read_file`].
    fn read_file(&mut self, path: String) -> Result<String, ProviderError> {
        fs::read_file(&path)
    }

    /// `write-file`. Default: [`fs::write_file`].
    fn write_file(&mut self, path: String, content: String) -> Result<(), ProviderError> {
        fs::write_file(&path, &content)
    }

    /// `delete-file`. Default: [`fs::delete_file`].
    fn delete_file(&mut self, path: String) -> Result<(), ProviderError> {
        fs::delete_file(&path)
    }

    /// `create-folder`. Default: [`fs::create_folder`].
    fn create_folder(&mut self, path: String) -> Result<(), ProviderError> {
        fs::create_folder(&path)
    }

    /// `rename-item`. Default: [`fs::rename_item`].
    fn rename_item(&mut self, old_path: String, new_path: String) -> Result<(), ProviderError> {
        fs::rename_item(&old_path, &new_path)
    }

    /// `get-diff-files`. Default: `unsupported`.
    fn get_diff_files(&mut self) -> Result<Vec<DiffFile>, ProviderError> {
        Err(ProviderError::unsupported(
            "this provider does not track changes (get-diff-files)",
        ))
    }

    /// `merge-as-patch`. Default: `unsupported`.
    fn merge_as_patch(&mut self) -> Result<String, ProviderError> {
        Err(ProviderError::unsupported(
            "this provider does not track changes (merge-as-patch)",
        ))
    }
}
