//! `GET /api/v1/templates`: the operator's templates apps may provision environments
//! from (`/ws/app?template=`), for any valid token; secret config values are never
//! shown, only their keys (`secretKeys`).

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::AppState;
use crate::tenancy::Principal;

/// Every template, by name.
pub(crate) async fn list(_who: Principal, State(s): State<AppState>) -> Json<Vec<Value>> {
    Json(s.manager.templates())
}
