//! `/healthz`: liveness for load balancers, which need no token, and the reasons behind
//! a `degraded` for the operator. The reasons name files, providers, config problems
//! and cluster hosts, so only an admin's token sees them; anyone else gets the status.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::caller::AdminOrNot;
use crate::lifecycle::{HealthStatus, HostHealth};

/// What `/healthz` answers: the full health to an admin, the status to anyone else.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum HealthAnswer {
    /// To a request with an admin's token.
    Full(HostHealth),
    /// To any other request: no token, a user's, or a bad one.
    Short(ShortHealth),
}

/// `/healthz` without an admin's token.
#[derive(Debug, Serialize, ToSchema)]
// `additionalProperties: false` in the spec, so the full answer is not also this one.
#[serde(deny_unknown_fields)]
pub(crate) struct ShortHealth {
    /// `ok`, or `degraded` when something needs a person (computed from everything).
    pub status: HealthStatus,
}

/// Liveness: 200 while the host serves, with `degraded` when something needs a person
/// (an invalid records file, a provider that failed to load); the reasons to admins only.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "host",
    responses(
        (status = 200, description = "The host serves; `degraded` when something needs a person. With an admin's token, also `reasons`, `storage` and `pendingRemovals` (`HostHealth`); without one, or with a user's or a bad one, only `status` (`ShortHealth`). A bad token is never refused here, but counts as a failed authentication.", body = HealthAnswer),
    ),
    security((), ("bearer" = ["admin"])),
)]
pub(crate) async fn healthz(
    AdminOrNot(admin): AdminOrNot,
    State(s): State<AppState>,
) -> Json<HealthAnswer> {
    let health = s.manager.health();
    Json(if admin {
        HealthAnswer::Full(health)
    } else {
        HealthAnswer::Short(ShortHealth {
            status: health.status,
        })
    })
}
