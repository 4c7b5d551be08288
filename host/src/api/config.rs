//! `GET /api/v1/config/status`: which `tether.toml` is in force and how its last
//! live reload went (the lifecycle's `ConfigStatus`). The file holds grants, the
//! operator's business: admin scope.

use axum::Json;
use axum::extract::State;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::lifecycle::ConfigStatus;
use crate::tenancy::{Principal, Scope};

/// `GET /api/v1/config/status` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/config/status",
    tag = "config",
    responses(
        (status = 200, description = "The config file in force and its last reload.", body = ConfigStatus),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn status(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<ConfigStatus>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.config_status()))
}
