//! The HTTP surface: REST for environments and providers, WebSockets for apps and
//! runtimes, `/healthz` and `/metrics`. Handlers only translate; every decision is
//! the lifecycle manager's.

mod audited;
mod body;
mod caller;
mod config;
mod dashboard;
mod environments;
mod error;
mod events;
mod logs;
mod metrics;
mod providers;
mod templates;
mod tickets;
mod tokens;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};

use crate::audit::AuditLog;
use crate::lifecycle::Manager;
use crate::tenancy::{Tickets, Tokens};
use crate::throttle::Throttle;
pub(crate) use caller::{AppCaller, bearer};
pub(crate) use error::ApiError;

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// The lifecycle manager.
    pub manager: Manager,
    /// Every token the host accepts, the operator's included.
    pub tokens: Arc<Tokens>,
    /// Where mutations and refused authentications are recorded.
    pub audit: AuditLog,
    /// Refuses addresses that fail to authenticate too often.
    pub throttle: Arc<Throttle>,
    /// Outstanding WebSocket tickets.
    pub tickets: Arc<Tickets>,
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
        .route("/api/v1/environments/{id}/logs", get(logs::logs))
        .route(
            "/api/v1/environments/{id}/restart",
            post(environments::restart),
        )
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/whoami", get(tokens::whoami))
        .route("/api/v1/tokens/admin/rotate", post(tokens::rotate_admin))
        .route("/api/v1/tokens/{id}", delete(tokens::revoke))
        .route("/api/v1/audit", get(audited::list))
        .route("/api/v1/tickets", post(tickets::create))
        .route("/api/v1/templates", get(templates::list))
        .route("/api/v1/providers", get(providers::list))
        .route(
            "/api/v1/providers/{name}",
            get(providers::get)
                .put(providers::install)
                .layer(DefaultBodyLimit::max(providers::MAX_COMPONENT_BYTES)),
        )
        .route("/api/v1/config/status", get(config::status))
        .route("/ws/events", get(events::stream))
        .route("/ws/app", get(ws::provisioned))
        .route("/ws/app/{id}", get(ws::app))
        .route("/ws/runtime/{id}", get(ws::runtime))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .merge(dashboard::routes())
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
