//! `/api/v1/providers`: what each loaded provider is, asks for (`commands`, `urls`,
//! `directories`), is granted by the operator, and is denied (asked for but not
//! covered by the grant).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::{ApiError, AppState, Authorized};
use crate::broker::{Capabilities, DeniedItems, Grant};
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
}

fn view(state: &AppState, p: &Arc<LoadedProvider>) -> ProviderView {
    let grant = state.manager.config().grant_for(&p.description.name);
    ProviderView {
        description: p.description.clone(),
        source: p.source.clone(),
        sha256: p.sha256.clone(),
        world: p.world.as_str(),
        granted: grant.clone(),
        denied: Capabilities::new(p.description.request(), grant).denied(),
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
    let p = s
        .manager
        .engine()
        .provider(&name)
        .ok_or_else(|| ApiError::not_found(format!("no provider named {name:?} is loaded")))?;
    Ok(Json(view(&s, &p)))
}
