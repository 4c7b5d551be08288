//! `/api/v1/providers`: the loaded providers as the lifecycle shows them
//! ([`ProviderView`]: description, source, world, grant, denials, config keys,
//! load error).

use axum::Json;
use axum::extract::{Path, State};

use super::{ApiError, AppState, Authorized};
use crate::lifecycle::ProviderView;

pub(crate) async fn list(_: Authorized, State(s): State<AppState>) -> Json<Vec<ProviderView>> {
    Json(s.manager.providers())
}

pub(crate) async fn get(
    _: Authorized,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    Ok(Json(s.manager.provider(&name)?))
}
