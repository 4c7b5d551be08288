//! The provider engine: one wasmtime `Engine` for the process, each provider
//! component compiled once into an `InstancePre`, and one instance per started
//! environment (see [`instance`]).
//!
//! Built-in providers are embedded in the binary; `.wasm` files in the providers
//! directory are loaded too, and a drop-in with a built-in's name replaces it. A file
//! that fails to load is reported and skipped; it never takes the others down.

mod bindings;
mod builtin;
mod dispatch;
mod host;
pub mod instance;
pub mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};

use crate::broker::net::NetConfig;
use crate::config::LimitsConfig;
use bindings::AnyPre;
pub use bindings::WorldVersion;
pub use instance::{HostState, InstanceSetup, ProviderHandle};
pub use types::*;

/// Epoch tick: the granularity of call deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// Wasm stack a provider may use; deeper recursion traps with a stack overflow.
pub(crate) const MAX_WASM_STACK: usize = 512 << 10;

/// Why loading or instantiating a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be configured.
    #[error("configuring the WebAssembly engine: {0}")]
    Setup(String),
    /// Reading a component file failed.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a valid component, or not of the provider world.
    #[error("not a loadable provider component: {0}")]
    Compile(String),
    /// Its `info()` failed or returned nonsense.
    #[error("provider info: {0}")]
    Info(String),
    /// Instantiating it failed.
    #[error("instantiating provider: {0}")]
    Instantiate(String),
}

/// Where a provider came from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ProviderSource {
    /// Embedded in the binary.
    BuiltIn,
    /// A file in the providers directory.
    DropIn {
        /// Its path.
        path: PathBuf,
    },
}

/// A compiled provider, ready to instantiate.
pub struct LoadedProvider {
    /// What it says about itself.
    pub description: ProviderDescription,
    /// Where it came from.
    pub source: ProviderSource,
    /// SHA-256 of the component bytes, hex.
    pub sha256: String,
    /// The provider world version it was built against.
    pub world: WorldVersion,
    pre: AnyPre,
}

impl std::fmt::Debug for LoadedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedProvider")
            .field("name", &self.description.name)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// A provider file that could not be loaded.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: String,
}

/// The process-wide engine and the providers it has loaded.
pub struct Engine {
    wasm: wasmtime::Engine,
    linker: Linker<HostState>,
    limits: LimitsConfig,
    net: NetConfig,
    providers: RwLock<BTreeMap<String, Arc<LoadedProvider>>>,
    failures: RwLock<Vec<LoadFailure>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Configures wasmtime (epoch deadlines, async, a capped wasm stack) and links
    /// WASI, brokered `wasi:http` and the host imports.
    pub fn new(limits: LimitsConfig, net: NetConfig) -> Result<Self, EngineError> {
        let setup = |e: wasmtime::Error| EngineError::Setup(format!("{e:#}"));
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        let wasm = wasmtime::Engine::new(&config).map_err(setup)?;
        let mut linker = Linker::new(&wasm);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(setup)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(setup)?;
        bindings::add_to_linker(&mut linker).map_err(setup)?;
        spawn_ticker(&wasm);
        Ok(Self {
            wasm,
            linker,
            limits,
            net,
            providers: RwLock::new(BTreeMap::new()),
            failures: RwLock::new(Vec::new()),
        })
    }

    /// Loads the built-in providers, then every `*.wasm` in `dir` (if it exists).
    pub async fn load_all(&self, dir: &Path) {
        for (name, bytes) in builtin::BUILTINS {
            match self.load(bytes.to_vec(), ProviderSource::BuiltIn).await {
                Ok(p) => self.register(p),
                Err(e) => {
                    tracing::error!(provider = name, error = %e, "built-in provider failed to load")
                }
            }
        }
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        for path in files {
            if let Err(e) = self.load_file(&path).await {
                tracing::error!(path = %path.display(), error = %e, "provider failed to load");
                self.write_failures().push(LoadFailure {
                    path: path.clone(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// Loads one drop-in file and registers it.
    pub async fn load_file(&self, path: &Path) -> Result<Arc<LoadedProvider>, EngineError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| EngineError::Io {
                path: path.to_owned(),
                source,
            })?;
        let loaded = self
            .load(
                bytes,
                ProviderSource::DropIn {
                    path: path.to_owned(),
                },
            )
            .await?;
        self.register(loaded.clone());
        Ok(loaded)
    }

    /// Compiles `bytes` and reads the provider's `info()`.
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        source: ProviderSource,
    ) -> Result<Arc<LoadedProvider>, EngineError> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let wasm = self.wasm.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&wasm, &bytes))
            .await
            .map_err(|e| EngineError::Compile(e.to_string()))?
            .map_err(|e| EngineError::Compile(format!("{e:#}")))?;
        // Read the version first: a component of another version would otherwise fail
        // to link with a message about a missing import instead of saying why.
        let world =
            bindings::world_version(&self.wasm, &component).map_err(EngineError::Compile)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(|pre| AnyPre::new(world, pre))
            .map_err(|e| EngineError::Compile(format!("{e:#}")))?;
        let description = self.probe_info(&pre).await?;
        Ok(Arc::new(LoadedProvider {
            description,
            source,
            sha256,
            world,
            pre,
        }))
    }

    async fn probe_info(&self, pre: &AnyPre) -> Result<ProviderDescription, EngineError> {
        let info_err = |e: wasmtime::Error| EngineError::Info(format!("{e:#}"));
        let mut store =
            instance::configured_store(&self.wasm, HostState::detached("?", &self.limits));
        store.set_epoch_deadline((Duration::from_secs(5).as_millis() / TICK.as_millis()) as u64);
        // The epoch deadline traps a spinning guest; the wall clock bounds one parked
        // in a host call.
        let probe = async {
            let bindings = pre.instantiate(&mut store).await?;
            bindings.info(&mut store).await
        };
        let info = tokio::time::timeout(Duration::from_secs(6), probe)
            .await
            .map_err(|_| EngineError::Info("info() did not return within 6 s".into()))?
            .map_err(info_err)?;
        ProviderDescription::from_wit(info).map_err(EngineError::Info)
    }

    fn register(&self, provider: Arc<LoadedProvider>) {
        let name = provider.description.name.clone();
        let mut map = self.providers.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = map.get(&name)
            && matches!(old.source, ProviderSource::DropIn { .. })
            && matches!(provider.source, ProviderSource::BuiltIn)
        {
            return;
        }
        tracing::info!(provider = %name, version = %provider.description.version, world = provider.world.as_str(), source = ?provider.source, "provider loaded");
        map.insert(name, provider);
    }

    fn write_failures(&self) -> std::sync::RwLockWriteGuard<'_, Vec<LoadFailure>> {
        self.failures.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every loaded provider, by name.
    pub fn providers(&self) -> Vec<Arc<LoadedProvider>> {
        let map = self.providers.read().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<Arc<LoadedProvider>> {
        let map = self.providers.read().unwrap_or_else(|p| p.into_inner());
        map.get(name).cloned()
    }

    /// Files that failed to load, with the reasons.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts an instance of `provider` serving one environment.
    pub async fn instantiate(
        &self,
        provider: &LoadedProvider,
        setup: InstanceSetup,
    ) -> Result<ProviderHandle, EngineError> {
        let name = provider.description.name.clone();
        let store = instance::new_store(&self.wasm, &name, setup, &self.limits, &self.net)?;
        instance::instantiate(
            &provider.pre,
            store,
            name,
            provider.description.version.clone(),
            provider.sha256.clone(),
            self.limits.clone(),
        )
        .await
    }
}

/// Advances the epoch every tick for as long as the engine lives.
fn spawn_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("tether-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the epoch ticker; deadlines will not fire");
    }
}

#[cfg(test)]
mod tests;
