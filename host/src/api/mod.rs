//! The HTTP surface: REST for environments and providers, WebSockets for apps and
//! runtimes, `/healthz` and `/metrics`. Handlers only translate; every decision is
//! the lifecycle manager's.

mod audited;
mod body;
mod caller;
mod client_text;
mod cluster;
mod config;
mod dashboard;
#[cfg(test)]
mod docs_contract;
mod environments;
mod error;
mod events;
mod health;
mod logs;
mod metrics;
mod openapi;
mod origin;
mod params;
mod providers;
mod removals;
mod templates;
mod tickets;
mod tokens;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

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
    /// The connections the host serves at once, and those it turned away.
    pub connections: Arc<crate::server::Connections>,
    /// Cluster mode: the tunnels other hosts' bridged apps arrive through, bounded
    /// apart from `connections`.
    pub tunnels: Option<Arc<crate::server::Connections>>,
}

/// Every route with its description: a route is added here through `routes!`, which
/// takes it and its `#[utoipa::path]` together, so none is served undocumented.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(environments::list, environments::create))
        .routes(routes!(
            environments::get,
            environments::patch,
            environments::delete
        ))
        .routes(routes!(environments::start))
        .routes(routes!(environments::stop))
        .routes(routes!(environments::restart))
        .routes(routes!(logs::logs))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::whoami))
        .routes(routes!(tokens::rotate_admin))
        .routes(routes!(tokens::revoke))
        .routes(routes!(audited::list))
        .routes(routes!(tickets::create))
        .routes(routes!(templates::list))
        .routes(routes!(providers::list))
        .routes(
            routes!(providers::get, providers::install)
                .layer(DefaultBodyLimit::max(providers::MAX_COMPONENT_BYTES)),
        )
        .routes(routes!(config::status))
        .routes(routes!(cluster::view))
        .routes(routes!(removals::list))
        .routes(routes!(removals::retry))
        .routes(routes!(removals::forget))
        .routes(routes!(events::stream))
        .routes(routes!(ws::provisioned))
        .routes(routes!(ws::app))
        .routes(routes!(ws::runtime))
        .routes(routes!(health::healthz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi::spec_json))
        .routes(routes!(openapi::docs_redirect))
        .routes(routes!(openapi::docs_index))
        .routes(routes!(openapi::docs_file))
}

/// The OpenAPI document of the whole API, as `GET /api/v1/openapi.json` serves it.
pub(crate) fn spec() -> utoipa::openapi::OpenApi {
    let mut api = routes().into_openapi();
    openapi::refuse_several_authorizations(&mut api);
    api
}

/// The whole router; `main` only binds and serves it.
pub(crate) fn router(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    // The dashboard's pages are not API: served beside it, undescribed.
    dashboard::beside(router)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

/// Every answer whose handler sets no `Cache-Control` (the dashboard's assets set
/// `no-cache`) is `no-store`: a browser otherwise writes what a token read (records
/// with their config, tokens, the audit log) to its disk cache, where it outlives the
/// tab the dashboard kept the token in.
async fn no_store(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header::CACHE_CONTROL};
    (response.headers_mut())
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The router other hosts' tunnels reach (cluster mode, `cluster/tunnel/`): only
/// app sockets (`/ws/app/{id}`, and `/ws/app` for a template connect). A tunnel
/// carries an app bridged from another host, never anything else, whoever opened it.
pub(crate) fn tunnel_router(state: AppState) -> Router {
    router(state).layer(axum::middleware::from_fn(only_app_sockets))
}

async fn only_app_sockets(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if is_app_socket(request.uri().path()) {
        next.run(request).await
    } else {
        ApiError::not_found("a tunnel carries app sockets only").into_response()
    }
}

/// Whether `path` is an app socket's route: `/ws/app/{id}`, or `/ws/app` (a template
/// connect), and nothing that merely starts alike.
fn is_app_socket(path: &str) -> bool {
    path == "/ws/app" || path.starts_with("/ws/app/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tunnel_serves_app_sockets_by_id_and_through_a_template_only() {
        for path in ["/ws/app", "/ws/app/e1", "/ws/app/"] {
            assert!(super::is_app_socket(path), "{path}");
        }
        for path in [
            "/ws/apps",
            "/ws/app.json",
            "/ws/runtime/e1",
            "/api/v1/environments",
            "/",
        ] {
            assert!(!super::is_app_socket(path), "{path}");
        }
    }

    /// The black-box suite proves every documented route is served and that the
    /// documented paths serve no other method; this keeps the other half by
    /// construction: the router gets routes only through `routes!`.
    #[test]
    fn routes_are_added_only_with_their_description() {
        let source = include_str!("mod.rs");
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        for call in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
        ] {
            assert!(
                !code.contains(call),
                "api/mod.rs calls {call}: add routes with `.routes(routes!(handler))` and a `#[utoipa::path]` on the handler"
            );
        }
    }
}
