//! A provider built against `tether:provider@0.1.0`, the world before the current one,
//! with raw `wit-bindgen` bindings (the SDK follows the newest world). Tests load it
//! as a drop-in to show the host runs older components: every value crosses the
//! boundary through the host's conversions, and `on-close-signal(destroy)` still
//! receives environment deletion.
//!
//! On start it writes `legacy.txt` in the workspace; on a destroying close it leaves
//! `destroyed-<environment id>` in its state directory for the test to find.

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/tether-provider@0.1.0",
        world: "provider-world",
    });
}

use std::cell::RefCell;

use bindings::exports::tether::provider::provider::Guest;
use bindings::tether::provider::log::{Level, log};
use bindings::tether::provider::types::{
    Capabilities, ChangeKind, DiffFile, Entry, Health, HealthState, InitVars, ProviderError,
    ProviderInfo, StartResult,
};
use bindings::tether::provider::{runtime, state};

/// The file each start writes in the workspace.
const MARKER: &str = "legacy.txt";

thread_local! {
    /// The init vars of the start this instance serves.
    static INIT: RefCell<Option<InitVars>> = const { RefCell::new(None) };
}

fn failed(what: &str, err: std::io::Error) -> ProviderError {
    ProviderError::Failed(format!("{what}: {err}"))
}

/// A workspace path; the host's preopen refuses anything that escapes it.
fn in_workspace(path: &str) -> String {
    format!("/workspace/{}", path.trim_start_matches('/'))
}

struct Legacy;

impl Guest for Legacy {
    fn info() -> ProviderInfo {
        ProviderInfo {
            name: "legacy".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Built against tether:provider@0.1.0 (tests).".to_owned(),
            capabilities: Capabilities {
                commands: Vec::new(),
                urls: Vec::new(),
                directories: Vec::new(),
            },
            config_schema: r#"{"type": "object"}"#.to_owned(),
            message_types: Vec::new(),
        }
    }

    fn on_provider_start(init: InitVars) -> Result<StartResult, ProviderError> {
        let text = format!("started {}\n", init.environment_id);
        std::fs::write(in_workspace(MARKER), &text).map_err(|e| failed("writing the marker", e))?;
        let resource_id = format!("legacy-{}", init.environment_id);
        state::set_resource_id(&resource_id);
        log(
            Level::Info,
            &format!("legacy provider started {resource_id}"),
        );
        let result = StartResult {
            resource_id,
            workspace_path: init.workspace_host_path.clone(),
            metadata: vec![Entry {
                key: "world".to_owned(),
                value: "0.1.0".to_owned(),
            }],
        };
        INIT.with(|slot| *slot.borrow_mut() = Some(init));
        Ok(result)
    }

    fn on_provider_agent_start(message: String) -> Result<(), ProviderError> {
        runtime::send(&message)
    }

    fn on_provider_stop() -> Result<(), ProviderError> {
        Ok(())
    }

    fn on_close_signal(destroy: bool) -> Result<(), ProviderError> {
        if !destroy {
            return Ok(());
        }
        let id = INIT.with(|slot| slot.borrow().as_ref().map(|i| i.environment_id.clone()));
        let id = id.ok_or_else(|| ProviderError::Failed("destroy before any start".to_owned()))?;
        std::fs::write(format!("/state/destroyed-{id}"), "destroyed\n")
            .map_err(|e| failed("writing the destroy marker", e))
    }

    fn on_raw_message(_message: String) -> Result<String, ProviderError> {
        Err(ProviderError::Unsupported("no raw messages".to_owned()))
    }

    fn check_health() -> Health {
        Health {
            state: HealthState::Healthy,
            detail: Some("built against 0.1.0".to_owned()),
        }
    }

    fn read_file(path: String) -> Result<String, ProviderError> {
        std::fs::read_to_string(in_workspace(&path)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ProviderError::NotFound(path),
            _ => failed("reading", e),
        })
    }

    fn write_file(path: String, content: String) -> Result<(), ProviderError> {
        std::fs::write(in_workspace(&path), content).map_err(|e| failed("writing", e))
    }

    fn delete_file(path: String) -> Result<(), ProviderError> {
        std::fs::remove_file(in_workspace(&path)).map_err(|e| failed("deleting", e))
    }

    fn create_folder(path: String) -> Result<(), ProviderError> {
        std::fs::create_dir_all(in_workspace(&path)).map_err(|e| failed("creating", e))
    }

    fn rename_item(old_path: String, new_path: String) -> Result<(), ProviderError> {
        std::fs::rename(in_workspace(&old_path), in_workspace(&new_path))
            .map_err(|e| failed("renaming", e))
    }

    fn get_diff_files() -> Result<Vec<DiffFile>, ProviderError> {
        let text = Self::read_file(MARKER.to_owned())?;
        Ok(vec![DiffFile {
            path: MARKER.to_owned(),
            change: ChangeKind::Added,
            diff: text.lines().map(|l| format!("+{l}\n")).collect(),
        }])
    }

    fn merge_as_patch() -> Result<String, ProviderError> {
        Err(ProviderError::Unsupported("no patches".to_owned()))
    }
}

bindings::export!(Legacy with_types_in bindings);
