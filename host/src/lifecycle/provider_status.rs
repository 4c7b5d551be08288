//! An environment's provider as its next start would see it: the provider in force
//! under its name (built-in or drop-in, possibly replaced or removed since) compared
//! with the component its running instance was started from.

use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::{LoadedProvider, ProviderHandle, ProviderSource};

/// How the loaded provider relates to the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) enum ProviderState {
    /// A provider of that name is loaded and, if the environment runs, it runs that
    /// very component.
    Current,
    /// The environment runs a component that is no longer the loaded one; the loaded
    /// one serves its next start.
    Replaced,
    /// No provider of that name is loaded: a start fails until one is.
    NotLoaded,
}

/// The provider a start would use now.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoadedView {
    /// Its version.
    pub version: String,
    /// SHA-256 of its component, hex.
    pub sha256: String,
    /// Built in, or the drop-in file it came from.
    pub source: LoadedSource,
}

/// Where the loaded provider came from, as an environment's view shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoadedSource {
    /// `builtIn` or `dropIn`.
    pub kind: SourceKind,
    /// A drop-in's file: its absolute path, shown to admins only (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Whether a provider is built in or dropped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) enum SourceKind {
    /// Embedded in the binary.
    BuiltIn,
    /// A file in the providers directory.
    DropIn,
}

impl From<&ProviderSource> for LoadedSource {
    fn from(source: &ProviderSource) -> Self {
        match source {
            ProviderSource::BuiltIn => Self {
                kind: SourceKind::BuiltIn,
                path: None,
            },
            ProviderSource::DropIn { path } => Self {
                kind: SourceKind::DropIn,
                path: Some(path.display().to_string()),
            },
        }
    }
}

/// The provider side of an environment, for people and tools.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProviderStatus {
    /// How the loaded provider relates to the environment.
    pub state: ProviderState,
    /// What a start would use now (absent when nothing of that name is loaded).
    #[schema(required = true)]
    pub loaded: Option<LoadedView>,
    /// The same, in a sentence.
    pub message: String,
}

/// The status of provider `name` for an environment running `running` (if it runs).
pub(super) fn provider_status(
    name: &str,
    running: Option<&ProviderHandle>,
    loaded: Option<&LoadedProvider>,
) -> ProviderStatus {
    let Some(loaded) = loaded else {
        let message = match running {
            Some(r) => format!(
                "provider {name:?} is no longer loaded; this environment keeps running {} {} (sha256 {}) until it stops, and cannot start again until a provider of that name is loaded",
                name,
                r.version,
                short(&r.sha256)
            ),
            None => not_loaded(name),
        };
        return ProviderStatus {
            state: ProviderState::NotLoaded,
            loaded: None,
            message,
        };
    };
    let version = &loaded.description.version;
    let from = source_text(&loaded.source);
    let (state, message) = match running {
        Some(r) if r.sha256 != loaded.sha256 => (
            ProviderState::Replaced,
            format!(
                "runs {name} {} (sha256 {}); {name} {version} (sha256 {}) from {from} is loaded now and serves the next start",
                r.version,
                short(&r.sha256),
                short(&loaded.sha256)
            ),
        ),
        Some(_) => (
            ProviderState::Current,
            format!("runs {name} {version} from {from}, the loaded version"),
        ),
        None => (
            ProviderState::Current,
            format!("{name} {version} from {from} serves the next start"),
        ),
    };
    ProviderStatus {
        state,
        loaded: Some(LoadedView {
            version: version.clone(),
            sha256: loaded.sha256.clone(),
            source: LoadedSource::from(&loaded.source),
        }),
        message,
    }
}

/// Why a start of an environment on provider `name` cannot happen.
pub(super) fn not_loaded(name: &str) -> String {
    format!(
        "provider {name:?} is not loaded: no built-in has that name and no file in the providers directory provides it (a file that failed to load is listed in /healthz); starting fails until it is loaded"
    )
}

fn source_text(source: &ProviderSource) -> String {
    match source {
        ProviderSource::BuiltIn => "the built-in".to_owned(),
        ProviderSource::DropIn { path } => match path.file_name() {
            Some(file) => format!("drop-in {}", file.to_string_lossy()),
            None => format!("drop-in {}", path.display()),
        },
    }
}

/// The first 12 hex digits: enough to tell versions apart in a sentence.
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}
