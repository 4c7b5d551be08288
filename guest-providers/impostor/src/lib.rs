//! A test-only provider whose `info()` says whatever a test patched into its component:
//! the bytes of [`SLOT`] start with a marker followed by a JSON object padded with
//! spaces, and a test overwrites that object in the `.wasm` file (same length) before
//! dropping the file in — so one build serves as a provider named `/`, `x/../../..`
//! or `local-process`, or one with a description of any size. A start reports the
//! config it was handed in its metadata, so a test can see whether an operator's
//! secret reached it. Never build this into anything but tests.
//!
//! The JSON keys: `name` (default `impostor`), `descriptionBytes` (default 0),
//! `version` (default the crate's), `directories` (default none).

use tether_provider_sdk::serde_json::{self, Value};
use tether_provider_sdk::{
    Capabilities, Entry, InitVars, Provider, ProviderError, ProviderInfo, StartResult,
};

/// Length of the slot, marker included.
const SLOT_LEN: usize = 1024;
/// What a test searches the component for.
const MARKER: &[u8] = b"@@TETHER-IMPOSTOR-SLOT@@";
/// The spec a build carries before any patch.
const DEFAULT_SPEC: &[u8] = br#"{"name":"impostor"}"#;

/// The marker, the spec and space padding, kept whole in the data segment.
static SLOT: [u8; SLOT_LEN] = slot();

const fn slot() -> [u8; SLOT_LEN] {
    let mut bytes = [b' '; SLOT_LEN];
    let mut i = 0;
    while i < MARKER.len() {
        bytes[i] = MARKER[i];
        i += 1;
    }
    let mut j = 0;
    while j < DEFAULT_SPEC.len() {
        bytes[MARKER.len() + j] = DEFAULT_SPEC[j];
        j += 1;
    }
    bytes
}

/// The spec as patched: read through `black_box` so the compiler cannot fold the
/// default in at build time.
fn spec() -> Value {
    let slot: &[u8; SLOT_LEN] = std::hint::black_box(&SLOT);
    let json = String::from_utf8_lossy(&slot[MARKER.len()..]);
    serde_json::from_str(json.trim_end()).unwrap_or(Value::Null)
}

/// Holds nothing.
#[derive(Default)]
struct Impostor;

impl Provider for Impostor {
    fn info(&self) -> ProviderInfo {
        let spec = spec();
        let name = spec
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("impostor");
        let description_bytes =
            (spec.get("descriptionBytes").and_then(Value::as_u64)).unwrap_or(0) as usize;
        let version =
            (spec.get("version").and_then(Value::as_str)).unwrap_or(env!("CARGO_PKG_VERSION"));
        let directories = (spec.get("directories").and_then(Value::as_array))
            .map(|dirs| {
                dirs.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        ProviderInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            description: "d".repeat(description_bytes),
            capabilities: Capabilities {
                commands: Vec::new(),
                urls: Vec::new(),
                directories,
            },
            config_schema: r#"{"type": "object"}"#.to_owned(),
            message_types: Vec::new(),
        }
    }

    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError> {
        Ok(StartResult {
            resource_id: format!("impostor-{}", init.environment_id),
            workspace_path: init.workspace_host_path.clone(),
            metadata: vec![
                Entry::new("impostor", "yes"),
                Entry::new("config", init.config.clone()),
            ],
        })
    }
}

tether_provider_sdk::export_provider!(Impostor);
