//! The compile cache: wasmtime's own on-disk cache of compiled components, keyed by
//! the component's bytes and the engine's compilation settings, so a restart with
//! unchanged providers compiles nothing. Where it lives is a setting
//! (`config::CompileCacheConfig`); opening and checking the directory is here.
//!
//! Cached entries are machine code the host maps and runs without re-checking, so the
//! directory must be writable by the operator alone: it is created `0700`, and an
//! existing one owned by someone else or writable by group or others is refused
//! rather than trusted.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::EngineError;
use crate::config::CompileCacheConfig;

/// What the cache has done since the engine started.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompileCacheStats {
    /// The cache directory.
    pub dir: PathBuf,
    /// Components loaded from the cache instead of compiled.
    pub hits: usize,
    /// Components compiled (and then stored in the cache).
    pub misses: usize,
}

/// Opens the cache `config` asks for (none when disabled), after checking that only
/// this user can write to its directory.
pub(super) fn open(config: &CompileCacheConfig) -> Result<Option<wasmtime::Cache>, EngineError> {
    let Some(dir) = &config.dir else {
        return Ok(None);
    };
    prepare_dir(dir)?;
    let mut settings = wasmtime::CacheConfig::new();
    settings.with_directory(dir);
    let cache = wasmtime::Cache::new(settings).map_err(|e| {
        EngineError::Setup(format!(
            "opening the compile cache in {}: {e:#}",
            dir.display()
        ))
    })?;
    tracing::info!(dir = %dir.display(), "compile cache enabled");
    Ok(Some(cache))
}

impl super::Engine {
    /// What the compile cache has done since the engine started; `None` without one.
    pub fn compile_cache_stats(&self) -> Option<CompileCacheStats> {
        // What a compiler child compiled is a miss, though the host found it cached.
        let apart = self
            .compiled_apart
            .load(std::sync::atomic::Ordering::Relaxed);
        self.compile_cache.as_ref().map(|cache| CompileCacheStats {
            dir: cache.directory().clone(),
            hits: cache.cache_hits().saturating_sub(apart),
            misses: cache.cache_misses() + apart,
        })
    }
}

/// Creates `dir` private to this user if it is missing; refuses one that someone else
/// could write to.
fn prepare_dir(dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};

    let refuse = |why: String| {
        EngineError::Setup(format!(
            "compile cache {}: {why}; cached machine code is trusted, so the directory must \
             be writable only by the user running tether (fix its owner or mode, or set \
             `[cache] enabled = false` in tether.toml)",
            dir.display()
        ))
    };
    if !dir.is_absolute() {
        return Err(refuse("the path must be absolute".into()));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| refuse(format!("cannot create it: {e}")))?;
    let meta = std::fs::metadata(dir).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(refuse(format!(
            "it is owned by uid {}, not by this user (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "its mode {:o} lets group or others write to it",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_directory_is_created_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/cache");
        prepare_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = prepare_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("group or others"), "{err}");
        assert!(prepare_dir(Path::new("relative/cache")).is_err());
    }

    #[test]
    fn disabled_opens_nothing() {
        assert!(open(&CompileCacheConfig::disabled()).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_second_engine_loads_from_the_cache_without_compiling() {
        use crate::config::LimitsConfig;
        use crate::engine::{Engine, ProviderSource};

        let root = tempfile::tempdir().unwrap();
        let config = CompileCacheConfig::in_dir(root.path().join("cache"));
        let (_, bytes) = super::super::builtin::BUILTINS[0];
        let mut loaded = Vec::new();
        for _ in 0..2 {
            let engine =
                Engine::with_compile_cache(LimitsConfig::default(), Default::default(), &config)
                    .unwrap();
            let p = engine
                .load(bytes.to_vec(), ProviderSource::BuiltIn)
                .await
                .unwrap();
            loaded.push((
                p.description.name.clone(),
                engine.compile_cache_stats().unwrap(),
            ));
        }
        let (cold, warm) = (&loaded[0].1, &loaded[1].1);
        assert_eq!(
            (cold.hits, cold.misses),
            (0, 1),
            "the first engine compiles"
        );
        assert_eq!(
            (warm.hits, warm.misses),
            (1, 0),
            "the second compiles nothing"
        );
        assert_eq!(loaded[0].0, loaded[1].0, "and gets the same provider");
    }
}
