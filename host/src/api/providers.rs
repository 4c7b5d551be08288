//! `/api/v1/providers`: the loaded providers as the lifecycle shows them
//! ([`ProviderView`]: description, source, world, grant, denials, config keys,
//! load error), and `/api/v1/config/status`: which `tether.toml` grants them and how
//! its last live reload went. Grants are the operator's business: these need the
//! `admin` scope.

use axum::Json;
use axum::extract::{Path, State};

use super::{ApiError, AppState};
use crate::lifecycle::{ConfigStatus, ProviderView};
use crate::tenancy::{Principal, Scope};

pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.providers()))
}

pub(crate) async fn get(
    who: Principal,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.provider(&name)?))
}

pub(crate) async fn config_status(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<ConfigStatus>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.config_status()))
}
