//! `GET /api/v1/config/status`: which `tether.toml` is in force and how its last
//! live reload went (the lifecycle's `ConfigStatus`). The file holds grants, the
//! operator's business: admin scope.

use axum::Json;
use axum::extract::State;

use super::{ApiError, AppState};
use crate::lifecycle::ConfigStatus;
use crate::tenancy::{Principal, Scope};

pub(crate) async fn status(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<ConfigStatus>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.config_status()))
}
