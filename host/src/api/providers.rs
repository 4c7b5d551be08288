//! `/api/v1/providers`: what each loaded provider is, asks for (`commands`, `urls`,
//! `directories`), is granted by the operator, and is denied (asked for but not
//! covered by the grant), which operator config keys it gets (never their values),
//! and why its file's latest content did not load, if it did not (the version loaded
//! before is still served then).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::{ApiError, AppState, Authorized};
use crate::broker::{Capabilities, DeniedItems};
use crate::config::Grant;
use crate::engine::{LoadedProvider, ProviderDescription, ProviderSource};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProviderView {
    #[serde(flatten)]
    description: ProviderDescription,
    source: ProviderSource,
    sha256: String,
    /// The provider world version the component was built against.
    world: &'static str,
    granted: Grant,
    denied: DeniedItems,
    /// Keys of the operator's `[providers.NAME] config`; values may be secrets.
    operator_config_keys: Vec<String>,
    /// Why the file's latest content did not load, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    load_error: Option<String>,
}

fn view(state: &AppState, p: &Arc<LoadedProvider>) -> ProviderView {
    let config = state.manager.config();
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
            ProviderSource::DropIn { path } => {
                state.manager.engine().failure_of(path).map(|f| f.error)
            }
            ProviderSource::BuiltIn => None,
        },
    }
}

pub(crate) async fn list(_: Authorized, State(s): State<AppState>) -> Json<Vec<ProviderView>> {
    let providers = s.manager.engine().providers();
    Json(providers.iter().map(|p| view(&s, p)).collect())
}

pub(crate) async fn get(
    _: Authorized,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    let engine = s.manager.engine();
    let p = engine.provider(&name).ok_or_else(|| {
        let mut message = format!("no provider named {name:?} is loaded");
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
        ApiError::not_found(message)
    })?;
    Ok(Json(view(&s, &p)))
}
