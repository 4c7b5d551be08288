//! The provider engine: one wasmtime `Engine` for the process, each provider
//! component compiled once into an `InstancePre`, and one instance per started
//! environment (see [`instance`]).
//!
//! Built-in providers are embedded in the binary; `.wasm` files in the providers
//! directory are loaded too, and a drop-in with a built-in's name replaces it when the
//! operator consented (`replace_builtin`). A file
//! that fails to load is reported and skipped; it never takes the others down. The
//! directory is rescanned on change for hot reload (`dropins`, `dir_watch`), and
//! compiled components are cached on disk (`cache`).

mod bindings;
mod builtin;
mod cache;
pub(crate) mod compile;
mod dir_watch;
mod dispatch;
mod dropins;
mod errno;
mod executor;
mod handle;
mod header;
mod host;
mod inline;
mod instance;
pub(crate) mod persisted;
mod stacks;
mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use wasmtime::component::{Component, Linker};

use crate::broker::tls::{TlsClient, TlsSetupError};
use crate::config::{CompileCacheConfig, LimitsConfig, NetConfig};
use crate::sync::RwLockExt;
use bindings::AnyPre;
pub use bindings::WorldVersion;
pub use cache::CompileCacheStats;
pub use dir_watch::{DirWatch, DirWatchError, watch_dir};
pub use dropins::read_component;
pub use handle::ProviderHandle;
pub(crate) use host::log::LogBudget;
pub use instance::{HostState, InstanceSetup};
pub use persisted::{StateChanges, StateReader, StateWriter};
pub use types::*;

/// Mappings an instance holds with its memory's initial image shared, with room to
/// spare: the image, mapped from a memfd between the two anonymous read-write pieces
/// of the memory, and one inaccessible run that the memory's guard regions share with
/// its parked fiber stack and its neighbours' (see `stacks.rs`) make four while idle;
/// a call in progress opens its stack (two more for its duration), and the host has
/// its own. Copying the image instead leaves two.
const MAPPINGS_SHARING_IMAGES: u64 = 5;
/// Running instances the host should hold before the kernel's cap on mappings stops
/// starts.
const INSTANCES_WANTED: u64 = 10_000;

/// Whether instances share their memory's initial image (copy-on-write from one memfd)
/// under the kernel's cap of `max_map_count` mappings per process, unless the operator
/// said (`limits.share_memory_images`). Sharing keeps the image's pages once for all
/// instances instead of once each (about 20 KiB of real memory per running `handoff`
/// environment) and makes an instantiation a mapping instead of a copy, but costs two
/// mappings each: under Linux's default cap (65,530) a host holds about 15,000 running
/// environments sharing and about 30,000 copying. Images are shared where the cap
/// leaves room for [`INSTANCES_WANTED`]. The guard region before each memory stays
/// either way: it is wasmtime's defence in depth against a miscompiled bounds check,
/// and the sandbox comes before density.
fn share_initial_images(max_map_count: Option<u64>) -> bool {
    max_map_count.is_some_and(|cap| cap >= MAPPINGS_SHARING_IMAGES * INSTANCES_WANTED)
}

/// The kernel's cap on memory mappings per process, if it can be read.
fn max_map_count() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Epoch tick: the granularity of call deadlines.
pub(crate) const TICK: Duration = Duration::from_millis(10);
/// Wasm stack a provider may use; deeper recursion traps with a stack overflow.
pub const MAX_WASM_STACK: usize = 512 << 10;
/// Largest provider component the host reads, from a drop-in file or an upload
/// (built providers are a few hundred KiB; a sparse or wrong file must not be read
/// whole into the host's memory).
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Why loading or instantiating a provider failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be configured.
    #[error("configuring the WebAssembly engine: {0}")]
    Setup(String),
    /// Reading a component file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The component file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A component file over [`MAX_COMPONENT_BYTES`]; it is not read.
    #[error("{path} has {bytes} bytes; a provider component is at most {MAX_COMPONENT_BYTES}")]
    TooLarge {
        /// The component file.
        path: PathBuf,
        /// Its size (at least, for a file that grew while read).
        bytes: u64,
    },
    /// Not WebAssembly, or WebAssembly that is not a component (said in words).
    #[error("{0}")]
    NotComponent(String),
    /// Not a valid component, or not of the provider world.
    #[error("not a loadable provider component: {0}")]
    Compile(String),
    /// Its `info()` failed or returned nonsense.
    #[error("provider info: {0}")]
    Info(String),
    /// Instantiating it failed.
    #[error("instantiating provider: {0}")]
    Instantiate(String),
    /// The TLS client of providers' `https` could not be built.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Where a provider came from.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ProviderSource {
    /// Embedded in the binary.
    BuiltIn,
    /// A file in the providers directory.
    DropIn {
        /// Its path.
        #[schema(value_type = String)]
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

/// What guests hold and were refused on the host (see [`Engine::guest_files`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct GuestFiles {
    /// Open files all instances hold now (`[limits] host_open_files` at most).
    pub open_files: usize,
    /// Opens refused at `max_open_files` or `host_open_files` since start.
    pub opens_refused: u64,
    /// Writes refused at a disk quota (`workspace_mib`, `state_mib`) since start.
    pub writes_refused: u64,
}

/// wasmtime's settings for providers: what the host's engine compiles with, and a
/// compiler child too (see [`compile`]), so that its cache entries are the host's.
fn wasm_config(share_images: bool, cache: Option<wasmtime::Cache>) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.cache(cache);
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.memory_init_cow(share_images);
    config
}

/// The process-wide engine and the providers it has loaded.
pub struct Engine {
    wasm: wasmtime::Engine,
    linker: Linker<HostState>,
    /// Swapped by a reload of `tether.toml`; each instance keeps the ones it was
    /// started with.
    settings: RwLock<(LimitsConfig, NetConfig)>,
    /// Built once at start-up from `[net]`'s roots (changing those takes a restart).
    tls: TlsClient,
    providers: RwLock<BTreeMap<String, Arc<LoadedProvider>>>,
    failures: RwLock<Vec<LoadFailure>>,
    compile_cache: Option<wasmtime::Cache>,
    dropins: dropins::DropIns,
    guests: executor::GuestExecutor,
    /// The fiber stacks instances run on (idle ones' pages given back).
    stacks: Arc<stacks::Stacks>,
    /// The spawn guards instances' children run under, once set.
    spawn_guard: std::sync::OnceLock<Arc<crate::broker::launch::Guards>>,
    /// The caps on what guests write in workspaces and state directories.
    disk: crate::disk_quota::DiskQuotas,
    /// The open files guests hold, all instances together.
    files: Arc<host::open_files::HostFiles>,
    /// Whether instances map their provider's initial memory copy-on-write.
    share_images: bool,
    /// The program drop-ins are first compiled by, once set (see [`compile`]).
    compiler: std::sync::OnceLock<compile::Compiler>,
    /// Components compiled by it into the cache (the host then loads them from there).
    compiled_apart: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine without a compile cache; see [`Engine::with_compile_cache`].
    pub fn new(limits: LimitsConfig, net: NetConfig) -> Result<Self, EngineError> {
        Self::with_compile_cache(limits, net, &CompileCacheConfig::disabled())
    }

    /// Configures wasmtime (epoch deadlines, async, a capped wasm stack, the compile
    /// cache), links WASI, brokered `wasi:http` and the host imports, and builds the
    /// TLS client of providers' `https` (reading `[net] extra_ca_files` now).
    pub fn with_compile_cache(
        limits: LimitsConfig,
        net: NetConfig,
        cache: &CompileCacheConfig,
    ) -> Result<Self, EngineError> {
        let setup = |e: wasmtime::Error| EngineError::Setup(format!("{e:#}"));
        let tls = TlsClient::from_config(&net)?;
        let compile_cache = cache::open(cache)?;
        let cap = max_map_count();
        let share = limits
            .share_memory_images
            .unwrap_or_else(|| share_initial_images(cap));
        tracing::debug!(
            share,
            max_map_count = cap,
            "instances {} their provider's initial memory image",
            if share { "share" } else { "copy" }
        );
        let mut config = wasm_config(share, compile_cache.clone());
        let stacks = stacks::Stacks::new();
        config.with_host_stack(stacks.clone());
        let wasm = wasmtime::Engine::new(&config).map_err(setup)?;
        let mut linker = Linker::new(&wasm);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(setup)?;
        host::preopens::add_to_linker(&mut linker).map_err(setup)?;
        host::filesystem::add_to_linker(&mut linker).map_err(setup)?;
        host::sockets::add_to_linker(&mut linker).map_err(setup)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(setup)?;
        bindings::add_to_linker(&mut linker).map_err(setup)?;
        spawn_ticker(&wasm);
        let guests = executor::GuestExecutor::new(limits.guest_threads)?;
        Ok(Self {
            wasm,
            linker,
            settings: RwLock::new((limits, net)),
            tls,
            providers: RwLock::new(BTreeMap::new()),
            failures: RwLock::new(Vec::new()),
            compile_cache,
            dropins: Default::default(),
            guests,
            stacks,
            spawn_guard: std::sync::OnceLock::new(),
            disk: Default::default(),
            files: host::open_files::HostFiles::new(),
            share_images: share,
            compiler: std::sync::OnceLock::new(),
            compiled_apart: Default::default(),
        })
    }

    /// Puts reloaded limits and network settings in force for instances started from
    /// now on (the guest executor's thread count is fixed at start-up).
    pub fn set_settings(&self, limits: LimitsConfig, net: NetConfig) {
        *self.settings.write_locked() = (limits, net);
    }

    /// Runs every child an instance spawns from now on under the spawn guard, the
    /// program at `tether` (see [`crate::broker::guard`]), and starts guards that wait
    /// for one (called in a Tokio runtime). Set once; later calls change nothing.
    pub fn set_spawn_guard(&self, tether: PathBuf) {
        self.spawn_guard
            .get_or_init(|| crate::broker::launch::Guards::new(tether));
    }

    /// Compiles every provider that is not built in with `tether` first, in a child
    /// process within `[limits] compile_mib` and `compile_secs` (see [`compile`]).
    /// Set once; later calls change nothing.
    pub fn set_compiler(&self, tether: PathBuf) {
        self.compiler.get_or_init(|| compile::Compiler::new(tether));
    }

    /// Loads the built-in providers, then every `*.wasm` in `dir` (if it exists); later
    /// changes to `dir` are picked up by [`Engine::rescan`].
    pub async fn load_all(&self, dir: &Path) {
        for (name, bytes) in builtin::BUILTINS {
            match self.load_trusted(bytes.to_vec()).await {
                Ok(p) => self.register(p),
                Err(e) => {
                    tracing::error!(provider = name, error = %e, "built-in provider failed to load")
                }
            }
        }
        self.rescan(dir).await;
    }

    /// Compiles `bytes` (first in a compiler child, once one is set: see
    /// [`Engine::set_compiler`]) and reads the provider's `info()`.
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        source: ProviderSource,
    ) -> Result<Arc<LoadedProvider>, EngineError> {
        self.load_compiled(bytes, source, true).await
    }

    /// [`Engine::load`] for a built-in provider: the binary's own code, compiled by the
    /// host directly.
    async fn load_trusted(&self, bytes: Vec<u8>) -> Result<Arc<LoadedProvider>, EngineError> {
        self.load_compiled(bytes, ProviderSource::BuiltIn, false)
            .await
    }

    async fn load_compiled(
        &self,
        bytes: Vec<u8>,
        source: ProviderSource,
        apart: bool,
    ) -> Result<Arc<LoadedProvider>, EngineError> {
        let path = match &source {
            ProviderSource::DropIn { path } => Some(path.as_path()),
            ProviderSource::BuiltIn => None,
        };
        header::check(&bytes, path).map_err(EngineError::NotComponent)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(compiler) = self.compiler.get().filter(|_| apart) {
            let settings = compile::Settings {
                share_images: self.share_images,
                cache_dir: self.compile_cache.as_ref().map(|c| c.directory().clone()),
            };
            let budget = {
                let limits = &self.settings.read_locked().0;
                compile::Budget {
                    bytes: limits.compile_bytes,
                    time: limits.compile_time,
                }
            };
            let compiled = (compiler.try_compile(&bytes, &sha256, &settings, budget)).await?;
            if compiled == compile::Compiled::Compiled && self.compile_cache.is_some() {
                // The host's compile below finds the child's work in the cache: it is
                // counted as the miss it was, not as a hit.
                self.compiled_apart
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
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
        let limits = self.settings.read_locked().0.clone();
        let mut store = instance::configured_store(&self.wasm, HostState::detached("?", &limits));
        instance::arm_deadline(&mut store, Duration::from_secs(5));
        let pre = pre.clone();
        // The epoch deadline traps a spinning guest; the wall clock bounds one parked
        // in a host call. Guest code runs on the guest executor, never on the caller's.
        let probe = self.guests.spawn(async move {
            let call = async {
                let bindings = pre.instantiate(&mut store).await?;
                bindings.info(&mut store).await
            };
            tokio::time::timeout(Duration::from_secs(6), call).await
        });
        let info = probe
            .await
            .map_err(|e| EngineError::Info(format!("the info() probe was lost: {e}")))?
            .map_err(|_| EngineError::Info("info() did not return within 6 s".into()))?
            .map_err(info_err)?;
        ProviderDescription::from_wit(info).map_err(EngineError::Info)
    }

    fn write_failures(&self) -> std::sync::RwLockWriteGuard<'_, Vec<LoadFailure>> {
        self.failures.write_locked()
    }

    /// Every loaded provider, by name.
    pub fn providers(&self) -> Vec<Arc<LoadedProvider>> {
        let map = self.providers.read_locked();
        map.values().cloned().collect()
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<Arc<LoadedProvider>> {
        let map = self.providers.read_locked();
        map.get(name).cloned()
    }

    /// Files that failed to load, with the reasons.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures.read_locked().clone()
    }

    /// What guests hold and were refused on the host's disk and open files.
    pub fn guest_files(&self) -> GuestFiles {
        GuestFiles {
            open_files: self.files.held(),
            opens_refused: self.files.refused(),
            writes_refused: self.disk.refused(),
        }
    }

    /// Starts an instance of `provider` serving one environment.
    pub async fn instantiate(
        &self,
        provider: &LoadedProvider,
        setup: InstanceSetup,
    ) -> Result<ProviderHandle, EngineError> {
        let (limits, net) = self.settings.read_locked().clone();
        let settings = instance::StoreSettings {
            limits: &limits,
            net: &net,
            tls: &self.tls,
            spawn_guard: self.spawn_guard.get(),
            disk: &self.disk,
            files: &self.files,
        };
        let store = instance::new_store(&self.wasm, &provider.description.name, setup, settings)?;
        handle::instantiate(&self.guests, provider, (store, self.stacks.slot()), limits).await
    }
}

/// Name and component bytes of each built-in provider (for tools and benchmarks).
pub fn builtin_components() -> &'static [(&'static str, &'static [u8])] {
    builtin::BUILTINS
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

#[cfg(test)]
mod fuzz;
