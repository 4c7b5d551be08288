//! `/api/v1/environments`: list, create, read, patch, delete, start, stop, restart.
//! Each handler checks the caller's scope (403 naming it); which environments the
//! caller reaches is the lifecycle's answer (someone else's is 404).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::audited::{Act, Remote, audited};
use super::body::{Deferred, Fields, FromObject};
use super::error::ErrorBody;
use super::params::Params;
use super::{ApiError, AppState};
use crate::audit::action;
use crate::lifecycle::{CreateRequest, DesiredState, EnvironmentView, RestartPolicy};
use crate::tenancy::{Principal, Scope};

/// `POST /api/v1/environments`; unknown fields are refused.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CreateBody {
    /// Unique name (see `docs/rest.md` for the rules); also names its workspace.
    name: String,
    /// A loaded provider.
    provider: String,
    /// Config handed to the provider (checked against its config schema).
    #[schema(value_type = Option<Object>)]
    config: Option<Map<String, Value>>,
    /// Start it at once (default `false`).
    #[schema(default = false, required = false)]
    start: bool,
    /// What to do when it fails (default `on-failure`).
    #[schema(required = false)]
    restart_policy: RestartPolicy,
    /// The user it belongs to (default: the caller's; another user's needs `admin`).
    owner: Option<String>,
    /// Seconds without an app or a relayed frame before the host stops it (0 or
    /// absent: never).
    #[schema(minimum = 0)]
    idle_stop_secs: Option<u64>,
}

const POLICIES: &[&str] = &["never", "on-failure", "always"];

impl FromObject for CreateBody {
    const FIELDS: &'static [&'static str] = &[
        "name",
        "provider",
        "config",
        "start",
        "restartPolicy",
        "owner",
        "idleStopSecs",
    ];

    fn from_object(f: &mut Fields) -> Result<Self, String> {
        Ok(Self {
            name: f.string("name")?,
            provider: f.string("provider")?,
            config: f.object("config")?,
            start: f.boolean("start")?.unwrap_or(false),
            restart_policy: f.choice("restartPolicy", POLICIES)?.unwrap_or_default(),
            owner: f.optional_string("owner")?,
            idle_stop_secs: f.unsigned("idleStopSecs")?,
        })
    }
}

/// `PATCH /api/v1/environments/{id}`: the fields given replace the record's; unknown
/// fields are refused.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct PatchBody {
    /// Merged into the config as a JSON merge patch (RFC 7396: `null` removes a key);
    /// it applies from the next start.
    #[schema(value_type = Option<Object>)]
    config: Option<Map<String, Value>>,
    /// What to do when it fails.
    restart_policy: Option<RestartPolicy>,
    /// Seconds without an app or a relayed frame before the host stops it (0: never).
    #[schema(minimum = 0)]
    idle_stop_secs: Option<u64>,
}

impl FromObject for PatchBody {
    const FIELDS: &'static [&'static str] = &["config", "restartPolicy", "idleStopSecs"];

    fn from_object(f: &mut Fields) -> Result<Self, String> {
        Ok(Self {
            config: f.object("config")?,
            restart_policy: f.choice("restartPolicy", POLICIES)?,
            idle_stop_secs: f.unsigned("idleStopSecs")?,
        })
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// `GET /api/v1/environments[?owner=USER]`: the caller's environments (every one,
/// for `admin`), of `owner` only if given.
#[utoipa::path(
    get,
    path = "/api/v1/environments",
    tag = "environments",
    params(
        ("owner" = Option<String>, Query, description = "Only this user's environments."),
    ),
    responses(
        (status = 200, description = "The environments the caller reaches, with live status.", body = Vec<EnvironmentView>),
        (status = 400, description = "`owner` is not a valid user name (`invalid_request`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `envs:read` scope (`missing_scope`).", body = ErrorBody),
    ),
    security(("bearer" = ["envs:read"])),
)]
pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
    Params(query): Params,
) -> ApiResult<Json<Vec<EnvironmentView>>> {
    who.require(Scope::EnvsRead)?;
    let owner = query.get("owner");
    if let Some(owner) = owner {
        crate::tenancy::check_user(owner)
            .map_err(|e| ApiError::bad_request(format!("owner: {e}")))?;
    }
    let views = s.manager.list(&who, owner.map(String::as_str));
    Ok(Json(views.into_iter().map(|v| v.seen_by(&who)).collect()))
}

/// `POST /api/v1/environments`: 201 with the new environment.
#[utoipa::path(
    post,
    path = "/api/v1/environments",
    tag = "environments",
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (and, with `start`, starting).", body = EnvironmentView),
        (status = 400, description = "The body is not JSON (`invalid_json`); or it stopped arriving for `[server] header_timeout_secs` or was not whole within `body_timeout_secs`, is not an object, has an unknown field or a bad value, or names a provider that is not loaded (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "The body is over 2 MiB (`body_too_large`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json` (`unsupported_media_type`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`), or the owner is at `max_environments` (or, with `start`, `max_running`) (`quota_exceeded`).", body = ErrorBody),
        (status = 403, description = "The token lacks `envs:write` (or `admin`, for another owner) (`missing_scope`), is limited to named environments, or is a user's and names a provider outside the user's `[tenancy] providers` (`forbidden`).", body = ErrorBody),
        (status = 409, description = "The name is taken (`conflict`).", body = ErrorBody),
        (status = 500, description = "The records, tokens or audit log could not be written (`store_error`, `audit_failed`) or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only or fails (`storage_unavailable`: `/healthz` says why), or, in cluster mode, NATS does not answer or another host has been admitting the owner's change for over 5 s (`cluster_unavailable`: the name could not be reserved across the cluster, or the change, counted against the owner's limits, could not be admitted): nothing was changed.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed; `/healthz` says why.", body = ErrorBody),
    ),
    security(("bearer" = ["envs:write"])),
)]
pub(crate) async fn create(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    body: Deferred<CreateBody>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    // Before the body is read: a token that may not create is refused at once, its
    // body (and the name in it) unread, so the audit entry has no target.
    if let Err(e) = who.require(Scope::EnvsWrite) {
        let act = Act {
            who: &who,
            remote,
            action: action::ENVIRONMENT_CREATE,
            target: "",
            owner: Some(who.user()),
        };
        return audited(&s, act, Err(e.into())).await;
    }
    let body = body.read().await?;
    let owner = body.owner.clone().unwrap_or_else(|| who.user().to_owned());
    let name = body.name.clone();
    let result = create_as(&who, &s, body, owner.clone()).await;
    // The id is known once made; before that, the name asked for.
    let target = result.as_ref().map_or(name, |v| v.id.clone());
    let act = Act {
        who: &who,
        remote,
        action: action::ENVIRONMENT_CREATE,
        target: &target,
        owner: Some(&owner),
    };
    let view = audited(&s, act, result).await?;
    Ok((StatusCode::CREATED, Json(view.seen_by(&who))))
}

async fn create_as(
    who: &Principal,
    s: &AppState,
    body: CreateBody,
    owner: String,
) -> ApiResult<EnvironmentView> {
    who.require(Scope::EnvsWrite)?;
    if !who.may_create() {
        return Err(ApiError::forbidden(
            "this token is limited to named environments and cannot create new ones",
        ));
    }
    if owner != who.user() {
        // Only an admin makes environments for someone else.
        who.require(Scope::Admin)?;
    }
    Ok(s.manager
        .create(CreateRequest {
            name: body.name,
            provider: body.provider,
            owner,
            config: body.config.unwrap_or_default(),
            start: body.start,
            restart_policy: body.restart_policy,
            idle_stop_secs: body.idle_stop_secs,
            by_admin: who.is_admin(),
        })
        .await?)
}

/// `GET /api/v1/environments/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(
        ("id" = String, Path, description = "Environment id."),
    ),
    responses(
        (status = 200, description = "The environment with its live status.", body = EnvironmentView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `envs:read` scope (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
    ),
    security(("bearer" = ["envs:read"])),
)]
pub(crate) async fn get(
    who: Principal,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EnvironmentView>> {
    who.require(Scope::EnvsRead)?;
    Ok(Json(s.manager.get(&who, &id)?.seen_by(&who)))
}

/// `PATCH /api/v1/environments/{id}`: changes config, restart policy, idle timeout.
#[utoipa::path(
    patch,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(
        ("id" = String, Path, description = "Environment id."),
    ),
    request_body(content = PatchBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The environment as changed.", body = EnvironmentView),
        (status = 400, description = "The body is not JSON (`invalid_json`); or it stopped arriving for `[server] header_timeout_secs` or was not whole within `body_timeout_secs`, is not an object, has an unknown field or a bad value (`invalid_request`).", body = ErrorBody),
        (status = 413, description = "The body is over 2 MiB (`body_too_large`).", body = ErrorBody),
        (status = 415, description = "The body is not sent as `application/json` (`unsupported_media_type`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `envs:write` scope (`missing_scope`), or is a user's and the environment was provisioned from a template, whose settings only an admin changes (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
        (status = 409, description = "The record is held back as invalid in `environments.json`; the host does not change it (`conflict`).", body = ErrorBody),
        (status = 500, description = "The records, tokens or audit log could not be written (`store_error`, `audit_failed`) or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only or fails (`storage_unavailable`): nothing was changed; `/healthz` says why.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed; `/healthz` says why.", body = ErrorBody),
    ),
    security(("bearer" = ["envs:write"])),
)]
pub(crate) async fn patch(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Deferred<PatchBody>,
) -> ApiResult<Json<EnvironmentView>> {
    let result = match who.require(Scope::EnvsWrite) {
        Err(e) => Err(e.into()),
        // Read only once the token may change environments; a body that cannot be
        // read is answered as before, without an audit entry.
        Ok(()) => {
            let body = body.read().await?;
            (s.manager)
                .patch(
                    &who,
                    &id,
                    body.config,
                    body.restart_policy,
                    body.idle_stop_secs,
                )
                .await
                .map_err(ApiError::from)
        }
    };
    let view = changed(&s, &who, remote, action::ENVIRONMENT_PATCH, &id, result).await?;
    Ok(Json(view.seen_by(&who)))
}

/// Audits a change to environment `id` that answers with its view.
async fn changed(
    s: &AppState,
    who: &Principal,
    remote: Remote,
    action: &'static str,
    id: &str,
    result: ApiResult<EnvironmentView>,
) -> ApiResult<EnvironmentView> {
    let owner = result.as_ref().ok().map(|v| v.owner.clone());
    let act = Act {
        who,
        remote,
        action,
        target: id,
        owner: owner.as_deref(),
    };
    audited(s, act, result).await
}

/// `DELETE /api/v1/environments/{id}[?force=true]`: with `force`, an admin forgets
/// the environment at once without waiting for its provider.
#[utoipa::path(
    delete,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(
        ("id" = String, Path, description = "Environment id."),
        ("force" = Option<bool>, Query, description = "`true`: forget it at once without waiting for its provider (`admin`)."),
    ),
    responses(
        (status = 204, description = "Stopped (if it ran) and deleted."),
        (status = 400, description = "`force` is not `true` or `false` (`invalid_request`).", body = ErrorBody),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks `envs:delete` (`admin` with `force`) (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
        (status = 409, description = "The record is held back as invalid in `environments.json`; the host does not change it (`conflict`).", body = ErrorBody),
        (status = 500, description = "The records, tokens or audit log could not be written (`store_error`, `audit_failed`) or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only or fails (`storage_unavailable`): nothing was changed; `/healthz` says why.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed; `/healthz` says why.", body = ErrorBody),
    ),
    security(("bearer" = ["envs:delete"])),
)]
pub(crate) async fn delete(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Params(query): Params,
) -> ApiResult<StatusCode> {
    // Read before it is gone, so the audit line names whose it was.
    let owner = s.manager.get(&who, &id).ok().map(|v| v.owner);
    let force = match query.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("force must be true or false")),
    };
    let (action, result) = if force {
        let result = match who.require(Scope::Admin) {
            Err(e) => Err(e.into()),
            Ok(()) => (s.manager.force_delete(&who, &id).await).map_err(ApiError::from),
        };
        (action::ENVIRONMENT_FORCE_DELETE, result)
    } else {
        let result = match who.require(Scope::EnvsDelete) {
            Err(e) => Err(e.into()),
            Ok(()) => s.manager.delete(&who, &id).await.map_err(ApiError::from),
        };
        (action::ENVIRONMENT_DELETE, result)
    };
    let act = Act {
        who: &who,
        remote,
        action,
        target: &id,
        owner: owner.as_deref(),
    };
    audited(&s, act, result).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/environments/{id}/start`: start: desired state `running`; the reply shows where it is heading (`starting`).
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/start",
    tag = "environments",
    params(
        ("id" = String, Path, description = "Environment id."),
    ),
    responses(
        (status = 202, description = "Accepted; the lifecycle works towards it.", body = EnvironmentView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`), or a start would pass the owner's `max_running` (`quota_exceeded`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `envs:write` scope (`missing_scope`), or is a user's and the environment's provider is outside the user's `[tenancy] providers` (`forbidden`; not for an environment provisioned from a template).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
        (status = 409, description = "The record is held back as invalid in `environments.json`; the host does not change it (`conflict`).", body = ErrorBody),
        (status = 500, description = "The records, tokens or audit log could not be written (`store_error`, `audit_failed`) or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only or fails (`storage_unavailable`: `/healthz` says why), or, in cluster mode, the change counts against the owner's limits and could not be admitted across the cluster (`cluster_unavailable`: NATS away, or another host admitting the owner's change for over 5 s): nothing was changed.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed; `/healthz` says why.", body = ErrorBody),
    ),
    security(("bearer" = ["envs:write"])),
)]
pub(crate) async fn start(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    let result = match who.require(Scope::EnvsWrite) {
        Err(e) => Err(e.into()),
        Ok(()) => (s
            .manager
            .set_desired(&who, &id, DesiredState::Running)
            .await)
            .map_err(ApiError::from),
    };
    let view = changed(&s, &who, remote, action::ENVIRONMENT_START, &id, result).await?;
    Ok((StatusCode::ACCEPTED, Json(view.seen_by(&who))))
}

/// `POST /api/v1/environments/{id}/stop`: stop: desired state `stopped`; the reply shows where it is heading (`stopping`).
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/stop",
    tag = "environments",
    params(
        ("id" = String, Path, description = "Environment id."),
    ),
    responses(
        (status = 202, description = "Accepted; the lifecycle works towards it.", body = EnvironmentView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`; see `Retry-After`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `envs:write` scope (`missing_scope`).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
        (status = 409, description = "The record is held back as invalid in `environments.json`; the host does not change it (`conflict`).", body = ErrorBody),
        (status = 500, description = "The records, tokens or audit log could not be written (`store_error`, `audit_failed`) or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only or fails (`storage_unavailable`): nothing was changed; `/healthz` says why.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed; `/healthz` says why.", body = ErrorBody),
    ),
    security(("bearer" = ["envs:write"])),
)]
pub(crate) async fn stop(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    let result = match who.require(Scope::EnvsWrite) {
        Err(e) => Err(e.into()),
        Ok(()) => (s
            .manager
            .set_desired(&who, &id, DesiredState::Stopped)
            .await)
            .map_err(ApiError::from),
    };
    let view = changed(&s, &who, remote, action::ENVIRONMENT_STOP, &id, result).await?;
    Ok((StatusCode::ACCEPTED, Json(view.seen_by(&who))))
}

/// `POST /api/v1/environments/{id}/restart`: restart: stop and start again (`restarting`).
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/restart",
    tag = "environments",
    params(
        ("id" = String, Path, description = "Environment id."),
    ),
    responses(
        (status = 202, description = "Accepted; the lifecycle works towards it.", body = EnvironmentView),
        (status = 401, description = "No token, or one that is unknown, revoked or expired (`unauthorized`).", body = ErrorBody),
        (status = 429, description = "This address failed to authenticate too often (`too_many_failures`), or a start would pass the owner's `max_running` (`quota_exceeded`).", body = ErrorBody),
        (status = 403, description = "The token lacks the `envs:write` scope (`missing_scope`), or is a user's and the environment's provider is outside the user's `[tenancy] providers` (`forbidden`; not for an environment provisioned from a template).", body = ErrorBody),
        (status = 404, description = "No such environment, or another user's (`not_found`).", body = ErrorBody),
        (status = 409, description = "The record is held back as invalid in `environments.json`; the host does not change it (`conflict`).", body = ErrorBody),
        (status = 500, description = "The records, tokens or audit log could not be written (`store_error`, `audit_failed`) or the host failed (`internal_error`).", body = ErrorBody),
        (status = 503, description = "The data directory's filesystem is read-only or fails (`storage_unavailable`: `/healthz` says why), or, in cluster mode, the change counts against the owner's limits and could not be admitted across the cluster (`cluster_unavailable`: NATS away, or another host admitting the owner's change for over 5 s): nothing was changed.", body = ErrorBody),
        (status = 507, description = "The data directory's filesystem is full (`storage_full`): nothing was changed; `/healthz` says why.", body = ErrorBody),
    ),
    security(("bearer" = ["envs:write"])),
)]
pub(crate) async fn restart(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    let result = match who.require(Scope::EnvsWrite) {
        Err(e) => Err(e.into()),
        Ok(()) => s.manager.restart(&who, &id).await.map_err(ApiError::from),
    };
    let view = changed(&s, &who, remote, action::ENVIRONMENT_RESTART, &id, result).await?;
    Ok((StatusCode::ACCEPTED, Json(view.seen_by(&who))))
}
