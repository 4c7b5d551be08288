//! `tether provider new NAME`: a provider crate on the SDK that builds with
//! `cargo build --target wasm32-wasip2` and loads as a drop-in.
//!
//! The crate is self-contained: the SDK and the WIT world are vendored into it (from
//! the copies this binary was built with), so it builds wherever Rust and the wasm
//! target are installed, with no checkout of Tether beside it.

use std::path::{Path, PathBuf};

use crate::engine::WorldVersion;

/// The provider world of every version in `wit/`, by version.
const WIT_SOURCES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/wit_sources.rs"));

/// The SDK's source files, by file name.
const SDK_SOURCES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/sdk_sources.rs"));

/// Why a scaffold could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScaffoldError {
    /// The name is not a usable crate and provider name.
    #[error(
        "invalid provider name {0:?}: use lowercase letters, digits and '-', starting with a letter"
    )]
    InvalidName(String),
    /// The target directory exists already.
    #[error("{0} already exists; pick another name or --path")]
    Exists(PathBuf),
    /// This build lacks the WIT of the newest version (a checkout without its
    /// `wit/tether-provider@VERSION` directory).
    #[error("this build has no wit/tether-provider@{0}/provider.wit to vendor")]
    MissingWorld(&'static str),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The WIT text of the newest version, which the build found in `wit/`.
fn latest_wit() -> Result<&'static str, ScaffoldError> {
    let version = WorldVersion::LATEST.as_str();
    WIT_SOURCES
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, text)| *text)
        .ok_or(ScaffoldError::MissingWorld(version))
}

/// Writes a new provider crate named `name` into `dir` (which must not exist).
pub(crate) fn new_provider(name: &str, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !valid {
        return Err(ScaffoldError::InvalidName(name.to_owned()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_owned()));
    }
    let latest = WorldVersion::LATEST;
    let wit = latest_wit()?;
    let sdk = Path::new("vendor/tether-provider-sdk");
    let mut files: Vec<(PathBuf, String)> = vec![
        ("Cargo.toml".into(), crate_manifest(name)),
        ("src/lib.rs".into(), LIB_TEMPLATE.replace("{{name}}", name)),
        (
            "README.md".into(),
            README_TEMPLATE
                .replace("{{name}}", name)
                .replace("{{file}}", &name.replace('-', "_")),
        ),
        (
            format!("wit/tether-provider@{}/provider.wit", latest.as_str()).into(),
            wit.to_owned(),
        ),
        (sdk.join("Cargo.toml"), SDK_MANIFEST.to_owned()),
    ];
    for (file, text) in SDK_SOURCES {
        files.push((sdk.join("src").join(file), (*text).to_owned()));
    }
    let mut written = Vec::with_capacity(files.len());
    for (rel, text) in files {
        let path = dir.join(rel);
        let io = |source| ScaffoldError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}

fn crate_manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
tether-provider-sdk = {{ path = "vendor/tether-provider-sdk" }}

[profile.release]
opt-level = "s"
lto = true
strip = true

# A workspace of its own, so it builds wherever it is put.
[workspace]
"#
    )
}

const SDK_MANIFEST: &str = r#"[package]
name = "tether-provider-sdk"
description = "Write Tether providers (WASI p2 components) as one Rust trait."
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
wit-bindgen = { version = "0.46", default-features = false, features = ["macros", "realloc"] }
serde_json = "1"
wasip2 = "1"
"#;

const LIB_TEMPLATE: &str = r##"//! The `{{name}}` Tether provider.
//!
//! Its resource is the environment's workspace directory; on start it runs the
//! reference runtime (`tether runtime`) there, which connects back to the host.
//! Replace `setup` with whatever creates or reconnects your resource.
//!
//! It also answers a message type of its own, `workspaceInfo`: an app sends
//! `{"type": "workspaceInfo", "requestId": "1"}` on its WebSocket and gets
//! `{"type": "remoteProviderEvent", "action": "workspaceInfoResponse", "requestId": "1",
//! "message": {"provider", "version", "runtimePid"}}`. Declare a type in `info`'s
//! `message_types` and answer it in `on_raw_message`; every other type goes to the
//! runtime.

use tether_provider_sdk::serde_json::{self, Value, json};
use tether_provider_sdk::{
    Capabilities, CommandRequest, Entry, InitVars, Provider, ProviderError, ProviderInfo,
    StartResult, log,
    process::{Child, Command},
};

#[derive(Default)]
struct MyProvider {
    runtime: Option<Child>,
}

impl Provider for MyProvider {
    fn info(&self) -> ProviderInfo {
        ProviderInfo {
            name: "{{name}}".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: "Runs the reference runtime in the environment's workspace.".to_owned(),
            // Asked for here, granted (or not) by the operator in tether.toml.
            capabilities: Capabilities {
                commands: vec![CommandRequest::new("tether", ["runtime"])],
                ..Capabilities::default()
            },
            config_schema: r#"{"type": "object"}"#.to_owned(),
            // App messages of these types come to `on_raw_message`, not the runtime.
            message_types: vec!["workspaceInfo".to_owned()],
        }
    }

    fn on_raw_message(&mut self, message: String) -> Result<String, ProviderError> {
        let message: Value = serde_json::from_str(&message)
            .map_err(|e| ProviderError::invalid_input(format!("not JSON: {e}")))?;
        match message["type"].as_str() {
            // The returned JSON is the `message` of the app's reply.
            Some("workspaceInfo") => Ok(json!({
                "provider": "{{name}}",
                "version": env!("CARGO_PKG_VERSION"),
                "runtimePid": self.runtime.as_ref().map(Child::pid),
            })
            .to_string()),
            other => Err(ProviderError::unsupported(format!("no handler for {other:?}"))),
        }
    }

    fn setup(&mut self, init: &InitVars) -> Result<StartResult, ProviderError> {
        if let Some(old) = self.runtime.take() {
            old.kill();
        }
        let child = Command::new("tether")
            .arg("runtime")
            .env("TETHER_RUNTIME_URL", &init.runtime_url)
            .env("TETHER_RUNTIME_TOKEN", &init.runtime_token)
            .spawn()?;
        log::info(format!("runtime started (pid {})", child.pid()));
        let metadata = vec![Entry::new("pid", child.pid().to_string())];
        self.runtime = Some(child);
        Ok(StartResult {
            resource_id: init.workspace_host_path.clone(),
            workspace_path: init.workspace_host_path.clone(),
            metadata,
        })
    }

    fn teardown(&mut self) -> Result<(), ProviderError> {
        if let Some(child) = self.runtime.take() {
            child.kill();
            child.wait();
        }
        Ok(())
    }
}

tether_provider_sdk::export_provider!(MyProvider);
"##;

const README_TEMPLATE: &str = r#"# {{name}}

A Tether provider. Build it, drop it into a host's providers directory, grant it what it
asks for, and create environments with `"provider": "{{name}}"`.

```sh
tether provider build                  # cargo build --release --target wasm32-wasip2
tether provider install target/wasm32-wasip2/release/{{file}}.wasm --data-dir <data-dir>
tether provider dev --remote --restart <environment-id>   # rebuild and reinstall on every change
```

Grant it the command it asks for in the host's `tether.toml`:

```toml
[providers.{{name}}]
commands = [{ program = "tether", args = ["runtime"] }]
env = ["PATH"]
set_env = ["TETHER_RUNTIME_URL", "TETHER_RUNTIME_TOKEN"]
```
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_self_contained_crate_and_refuses_bad_names_and_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("my-provider");
        let files = new_provider("my-provider", &target).unwrap();
        assert!(
            files
                .iter()
                .any(|f| f.ends_with("vendor/tether-provider-sdk/src/lib.rs"))
        );
        let manifest = std::fs::read_to_string(target.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"my-provider\""));
        let lib = std::fs::read_to_string(target.join("src/lib.rs")).unwrap();
        assert!(lib.contains("name: \"my-provider\""));
        assert!(matches!(
            new_provider("my-provider", &target),
            Err(ScaffoldError::Exists(_))
        ));
        for bad in ["", "Caps", "-x", "x-", "a b", "../x"] {
            assert!(matches!(
                new_provider(bad, &dir.path().join("other")),
                Err(ScaffoldError::InvalidName(_))
            ));
        }
    }

    #[test]
    fn vendors_the_newest_world_and_an_sdk_built_against_it() {
        let latest = WorldVersion::LATEST.as_str();
        assert!(
            latest_wit()
                .unwrap()
                .contains(&format!("package tether:provider@{latest}"))
        );
        // The SDK's bindings must name the same version, or a scaffolded crate would
        // build against a world the host does not call newest.
        let (_, sdk_lib) = SDK_SOURCES.iter().find(|(f, _)| *f == "lib.rs").unwrap();
        assert!(
            sdk_lib.contains(&format!("wit/tether-provider@{latest}\"")),
            "the SDK's generate! path does not name tether-provider@{latest}"
        );
        let dir = tempfile::tempdir().unwrap();
        new_provider("p", &dir.path().join("p")).unwrap();
        assert!(
            dir.path()
                .join(format!("p/wit/tether-provider@{latest}/provider.wit"))
                .exists()
        );
    }
}
