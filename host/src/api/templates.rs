//! `GET /api/v1/templates`: the operator's templates apps may provision environments
//! from (`/ws/app?template=`), for any valid token; secret config values are never
//! shown, only their keys (`secretKeys`).

use axum::Json;
use axum::extract::State;

use super::AppState;
use super::error::ErrorBody;
use crate::config::TemplateView;
use crate::tenancy::Principal;

/// Every template, by name.
#[utoipa::path(
    get,
    path = "/api/v1/templates",
    tag = "templates",
    responses(
        (status = 200, description = "Every template, by name; secret values never, their keys only.", body = Vec<TemplateView>),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub(crate) async fn list(_who: Principal, State(s): State<AppState>) -> Json<Vec<TemplateView>> {
    Json(s.manager.templates())
}
