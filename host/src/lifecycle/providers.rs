//! The loaded providers as `/api/v1/providers` shows them: what each is, asks for
//! (`commands`, `urls`, `directories`), is granted by the operator and is denied
//! (asked for but not covered by the grant), which operator config keys it gets (never
//! their values), and why its file's latest content did not load, if it did not (the
//! version loaded before is still served then). In cluster mode it also tells the
//! cluster what the providers are ([`digest`]) whenever that may have changed, so the
//! hosts can compare theirs.

use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::live_config::LiveConfig;
use super::{LifecycleError, Manager};
use crate::broker::{Capabilities, DeniedItems};
use crate::cluster::Cluster;
use crate::config::{Grant, ProvidersDigest, ServeConfig};
use crate::engine::{
    CompileCacheStats, Engine, LoadedProvider, ProviderDescription, ProviderSource,
};
use crate::sync::MutexExt;

/// One loaded provider, for people and tools.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProviderView {
    /// What the provider says about itself.
    #[serde(flatten)]
    description: ProviderDescription,
    /// Built in, or the drop-in file it was loaded from.
    source: ProviderSource,
    /// SHA-256 of its component, hex.
    sha256: String,
    /// The provider world version the component was built against.
    world: &'static str,
    /// What the operator grants it (`[providers.NAME]` of `tether.toml`).
    granted: Grant,
    /// What it asks for that the grant does not cover.
    denied: DeniedItems,
    /// Keys of the operator's `[providers.NAME] config`; values may be secrets.
    operator_config_keys: Vec<String>,
    /// Why the file's latest content did not load, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    load_error: Option<String>,
}

/// Counts of the engine's providers, for `/metrics`.
#[derive(Debug, Clone)]
pub(crate) struct ProviderCounts {
    /// Providers loaded (built-in and drop-in).
    pub loaded: usize,
    /// Provider files that do not load.
    pub load_failures: usize,
    /// Compile cache hits and misses, when the cache is on.
    pub compile_cache: Option<CompileCacheStats>,
    /// What guests hold and were refused on the host's disk and open files.
    pub guest_files: crate::engine::GuestFiles,
}

/// The engine's providers seen with the operator's grants and config.
#[derive(Debug, Clone)]
pub(super) struct Providers {
    engine: Arc<Engine>,
    config: LiveConfig,
    /// Told what the providers are after each change; `None` when this host runs alone.
    cluster: Option<Cluster>,
    /// Held from reading the providers to telling the cluster, so two publishes that
    /// race (a rescan and a reload) cannot leave the older reading in force.
    publishing: Arc<std::sync::Mutex<()>>,
}

/// The providers loaded in `engine` under `config`, as the hosts of a cluster compare
/// them: the SHA-256 each component's bytes got when they were loaded (not hashed
/// again here), with the grant and operator config in force for it.
pub(crate) fn digest(engine: &Engine, config: &ServeConfig) -> ProvidersDigest {
    let loaded = engine.providers();
    config
        .providers_digest((loaded.iter()).map(|p| (p.description.name.as_str(), p.sha256.as_str())))
}

impl Manager {
    /// Every loaded provider.
    pub(crate) fn providers(&self) -> Vec<ProviderView> {
        self.shared.providers.all()
    }

    /// The loaded provider called `name`; `NotFound` names the file that meant to
    /// provide it and why it did not load, when there is one.
    pub(crate) fn provider(&self, name: &str) -> Result<ProviderView, LifecycleError> {
        self.shared.providers.one(name)
    }

    /// How many providers are loaded and failing, and the compile cache's figures.
    pub(crate) fn provider_counts(&self) -> ProviderCounts {
        self.shared.providers.counts()
    }
}

impl Providers {
    pub(super) fn new(engine: Arc<Engine>, config: LiveConfig, cluster: Option<Cluster>) -> Self {
        Self {
            engine,
            config,
            cluster,
            publishing: Arc::default(),
        }
    }

    /// Tells the cluster what the providers are now, under the settings in force (a
    /// rescan loaded or unloaded some, or `tether.toml` was reloaded).
    pub(super) fn publish(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let _one_at_a_time = self.publishing.locked();
        cluster.set_providers(&digest(&self.engine, &self.config.get()));
    }

    /// Whether a provider called `name` is loaded.
    pub(super) fn is_loaded(&self, name: &str) -> bool {
        self.engine.provider(name).is_some()
    }

    /// The extra message types provider `name` answers (none if it is not loaded).
    pub(super) fn message_types(&self, name: &str) -> Vec<String> {
        (self.engine.provider(name))
            .map(|p| p.description.message_types.clone())
            .unwrap_or_default()
    }

    /// A line per provider file that does not load, for `/healthz`.
    pub(super) fn load_failures(&self) -> Vec<String> {
        (self.engine.failures().into_iter())
            .map(|f| format!("provider {}: {}", f.path.display(), f.error))
            .collect()
    }

    /// The providers directory, watched for drop-ins.
    pub(super) fn dir(&self) -> std::path::PathBuf {
        self.config.get().providers_dir()
    }

    /// Loads what changed in the providers directory.
    pub(super) async fn rescan(&self) {
        let dir = self.config.get().providers_dir();
        self.engine.rescan(&dir).await;
        self.publish();
    }

    fn all(&self) -> Vec<ProviderView> {
        (self.engine.providers().iter())
            .map(|p| self.view(p))
            .collect()
    }

    /// The engine the providers are loaded into.
    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(super) fn one(&self, name: &str) -> Result<ProviderView, LifecycleError> {
        let engine = &self.engine;
        let p = engine.provider(name).ok_or_else(|| {
            // Quoted cut and escaped: the name comes from the request's path.
            let mut message = format!(
                "no provider named {} is loaded",
                crate::untrusted::named(name)
            );
            // A file named after the provider most likely meant to provide it.
            let stem = name.replace('-', "_");
            for f in engine.failures() {
                let file = f
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().replace('-', "_"));
                if file.as_deref() == Some(stem.as_str()) {
                    message = format!(
                        "{message}; {} failed to load: {}",
                        f.path.display(),
                        f.error
                    );
                }
            }
            LifecycleError::NoProvider(message)
        })?;
        Ok(self.view(&p))
    }

    fn counts(&self) -> ProviderCounts {
        let engine = &self.engine;
        ProviderCounts {
            loaded: engine.providers().len(),
            load_failures: engine.failures().len(),
            compile_cache: engine.compile_cache_stats(),
            guest_files: engine.guest_files(),
        }
    }

    fn view(&self, p: &Arc<LoadedProvider>) -> ProviderView {
        let config = self.config.get();
        let grant = config.grant_for(&p.description.name);
        let operator_config_keys = (config.provider_config.get(&p.description.name))
            .map(|c| c.keys().map(str::to_owned).collect())
            .unwrap_or_default();
        ProviderView {
            description: p.description.clone(),
            source: p.source.clone(),
            sha256: p.sha256.clone(),
            world: p.world.as_str(),
            granted: grant.clone(),
            denied: Capabilities::new(p.description.request(), grant).denied(),
            operator_config_keys,
            load_error: match &p.source {
                ProviderSource::DropIn { path } => self.engine.failure_of(path).map(|f| f.error),
                ProviderSource::BuiltIn => None,
            },
        }
    }
}
