//! `GET /api/v1/cluster`: the hosts of the cluster, what each runs, and the latest
//! conflicts between hosts' concurrent changes. Operator business: admin scope.

use axum::Json;
use axum::extract::State;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::cluster::ClusterView;
use crate::tenancy::{Principal, Scope};

/// `GET /api/v1/cluster` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/cluster",
    tag = "cluster",
    responses(
        (status = 200, description = "The cluster as this host sees it.", body = ClusterView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "This host runs alone, not in cluster mode (`not_found`).", body = ErrorBody),
        (status = 503, description = "This host cannot reach NATS right now (`cluster_unavailable`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn view(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<ClusterView>, ApiError> {
    who.require(Scope::Admin)?;
    let Some(cluster) = s.manager.cluster() else {
        return Err(ApiError::not_found(
            "this host runs alone: start it with --cluster and --host-id for cluster mode",
        ));
    };
    let view = cluster
        .view()
        .await
        .map_err(|e| ApiError::cluster_unavailable(e.to_string()))?;
    Ok(Json(view))
}
