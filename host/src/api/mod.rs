//! The HTTP surface: REST for environments and providers, WebSockets for apps and
//! runtimes, `/healthz` and `/metrics`. Handlers only translate; every decision is
//! the lifecycle manager's.

mod body;
mod environments;
mod error;
mod metrics;
mod providers;
mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::{get, post};

use crate::auth::ApiToken;
use crate::lifecycle::Manager;
pub(crate) use error::ApiError;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// The lifecycle manager.
    pub manager: Manager,
    /// The API token.
    pub token: ApiToken,
}

/// The whole router; `main` only binds and serves it.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/api/v1/environments",
            get(environments::list).post(environments::create),
        )
        .route(
            "/api/v1/environments/{id}",
            get(environments::get)
                .patch(environments::patch)
                .delete(environments::delete),
        )
        .route("/api/v1/environments/{id}/start", post(environments::start))
        .route("/api/v1/environments/{id}/stop", post(environments::stop))
        .route(
            "/api/v1/environments/{id}/restart",
            post(environments::restart),
        )
        .route("/api/v1/providers", get(providers::list))
        .route("/api/v1/providers/{name}", get(providers::get))
        .route("/ws/app/{id}", get(ws::app))
        .route("/ws/runtime/{id}", get(ws::runtime))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .with_state(state)
}

/// Liveness: 200 while the host serves, with `degraded` and the reasons when something
/// needs a person (an invalid records file, a provider that failed to load).
async fn healthz(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> axum::Json<crate::lifecycle::HostHealth> {
    axum::Json(s.manager.health())
}

/// The bearer token of a request, if it carries one.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Extractor that admits only requests carrying the API token.
#[derive(Debug)]
pub(crate) struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            Some(token) if state.token.verify(token) => Ok(Authorized),
            Some(_) => Err(ApiError::unauthorized("invalid API token")),
            None => Err(ApiError::unauthorized(
                "missing API token: send `Authorization: Bearer <token>`",
            )),
        }
    }
}
