//! `/api/v1/environments`: list, create, read, patch, delete, start, stop, restart.
//! Each handler checks the caller's scope (403 naming it); which environments the
//! caller reaches is the lifecycle's answer (someone else's is 404).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::audited::{Act, Remote, audited};
use super::body::{Body, Fields, FromObject};
use super::{ApiError, AppState};
use crate::audit::action;
use crate::lifecycle::{CreateRequest, DesiredState, EnvironmentView, RestartPolicy};
use crate::tenancy::{Principal, Scope};

/// `POST /api/v1/environments`.
#[derive(Debug)]
pub(crate) struct CreateBody {
    name: String,
    provider: String,
    config: Option<Map<String, Value>>,
    start: bool,
    restart_policy: RestartPolicy,
    owner: Option<String>,
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

/// `PATCH /api/v1/environments/{id}`.
#[derive(Debug)]
pub(crate) struct PatchBody {
    config: Option<Map<String, Value>>,
    restart_policy: Option<RestartPolicy>,
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
pub(crate) async fn list(
    who: Principal,
    State(s): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<Vec<EnvironmentView>>> {
    who.require(Scope::EnvsRead)?;
    let owner = query.get("owner");
    if let Some(owner) = owner {
        crate::tenancy::check_user(owner)
            .map_err(|e| ApiError::bad_request(format!("owner: {e}")))?;
    }
    Ok(Json(s.manager.list(&who, owner.map(String::as_str))))
}

pub(crate) async fn create(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Body(body): Body<CreateBody>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
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
    Ok((StatusCode::CREATED, Json(view)))
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
        })
        .await?)
}

pub(crate) async fn get(
    who: Principal,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EnvironmentView>> {
    who.require(Scope::EnvsRead)?;
    Ok(Json(s.manager.get(&who, &id)?))
}

pub(crate) async fn patch(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<PatchBody>,
) -> ApiResult<Json<EnvironmentView>> {
    let result = match who.require(Scope::EnvsWrite) {
        Err(e) => Err(e.into()),
        Ok(()) => (s
            .manager
            .patch(
                &who,
                &id,
                body.config,
                body.restart_policy,
                body.idle_stop_secs,
            )
            .await)
            .map_err(ApiError::from),
    };
    let view = changed(&s, &who, remote, action::ENVIRONMENT_PATCH, &id, result).await?;
    Ok(Json(view))
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
pub(crate) async fn delete(
    who: Principal,
    remote: Remote,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
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
    Ok((StatusCode::ACCEPTED, Json(view)))
}

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
    Ok((StatusCode::ACCEPTED, Json(view)))
}

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
    Ok((StatusCode::ACCEPTED, Json(view)))
}
