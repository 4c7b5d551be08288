//! `/api/v1/removals`: deleted environments whose resource the host still tries to
//! remove (README, "A resource whose removal failed"). Admins list them, have one
//! tried now, or drop one the host should stop trying (removed by hand, or kept).
//! Operator business: admin scope. In cluster mode each host answers for its own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::audited::{Act, Remote, audited};
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::audit::action;
use crate::lifecycle::RemovalView;
use crate::tenancy::{Principal, Scope};

/// `GET /api/v1/removals` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/removals",
    tag = "removals",
    responses(
        (status = 200, description = "This host's pending removals, by environment id.", body = Vec<RemovalView>),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
) -> Result<Json<Vec<RemovalView>>, ApiError> {
    who.require(Scope::Admin)?;
    Ok(Json(s.manager.removals()))
}

/// `POST /api/v1/removals/{id}/retry` (admin): tried within a second.
#[utoipa::path(
    post,
    path = "/api/v1/removals/{id}/retry",
    tag = "removals",
    params(
        ("id" = String, Path, description = "The deleted environment's id."),
    ),
    responses(
        (status = 202, description = "Due now: the background task tries it within a second. While an attempt is in flight (`inFlight`) that attempt decides: if it fails, the next is due after the usual backoff.", body = RemovalView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No pending removal for that environment on this host (`not_found`).", body = ErrorBody),
        (status = 500, description = "The audit log could not be written (`audit_failed`).", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn retry(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RemovalView>), ApiError> {
    let result = who
        .require(Scope::Admin)
        .map_err(ApiError::from)
        .and_then(|()| (s.manager.retry_removal_now(&id)).ok_or_else(|| no_removal(&id)));
    let owner = result.as_ref().ok().map(|v| v.owner.clone());
    let act = Act {
        who: &who,
        remote,
        action: action::ENVIRONMENT_REMOVAL_RETRY_NOW,
        target: &id,
        owner: owner.as_deref(),
    };
    Ok((StatusCode::ACCEPTED, Json(audited(&s, act, result).await?)))
}

/// `DELETE /api/v1/removals/{id}` (admin): the entry as it was.
#[utoipa::path(
    delete,
    path = "/api/v1/removals/{id}",
    tag = "removals",
    params(
        ("id" = String, Path, description = "The deleted environment's id."),
    ),
    responses(
        (status = 200, description = "Dropped: the host no longer tries to remove the resource, which stays as it is. An attempt in flight (`inFlight`) runs to its end, but its failure is not kept.", body = RemovalView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `admin` scope (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No pending removal for that environment on this host (`not_found`).", body = ErrorBody),
        (status = 500, description = "The removals journal or the audit log could not be written (`store_error`, `internal_error`, `audit_failed`): the entry stays.", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only (`storage_unavailable`): the entry stays.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): the entry stays.", body = ErrorBody),
    ),
    security(("bearer" = ["admin"])),
)]
pub(crate) async fn forget(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RemovalView>, ApiError> {
    let result = match who.require(Scope::Admin) {
        Err(e) => Err(e.into()),
        Ok(()) => match s.manager.drop_removal(&id) {
            Ok(Some(view)) => Ok(view),
            Ok(None) => Err(no_removal(&id)),
            Err(e) => Err(e.into()),
        },
    };
    let owner = result.as_ref().ok().map(|v| v.owner.clone());
    let act = Act {
        who: &who,
        remote,
        action: action::ENVIRONMENT_REMOVAL_DROP,
        target: &id,
        owner: owner.as_deref(),
    };
    Ok(Json(audited(&s, act, result).await?))
}

fn no_removal(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no pending removal for environment {} on this host",
        crate::untrusted::named(id)
    ))
}
