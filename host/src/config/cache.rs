//! Where compiled providers are cached (`[cache]` in `tether.toml`); the engine opens
//! and checks the directory (`engine/cache.rs`).

use std::path::PathBuf;

/// Where compiled components are cached (`[cache]` in `tether.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileCacheConfig {
    /// The cache directory (absolute), or `None` to compile every load.
    pub dir: Option<PathBuf>,
}

impl CompileCacheConfig {
    /// No cache: every load compiles.
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    /// A cache in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }
}
