//! `/api/v1/environments`: list, create, read, patch, delete, start, stop, restart.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::body::{Body, Fields, FromObject};
use super::{ApiError, AppState, Authorized};
use crate::lifecycle::{CreateRequest, DesiredState, EnvironmentView, RestartPolicy};

/// `POST /api/v1/environments`.
#[derive(Debug)]
pub(crate) struct CreateBody {
    name: String,
    provider: String,
    config: Option<Map<String, Value>>,
    start: bool,
    restart_policy: RestartPolicy,
}

const POLICIES: &[&str] = &["never", "on-failure", "always"];

impl FromObject for CreateBody {
    const FIELDS: &'static [&'static str] =
        &["name", "provider", "config", "start", "restartPolicy"];

    fn from_object(f: &mut Fields) -> Result<Self, String> {
        Ok(Self {
            name: f.string("name")?,
            provider: f.string("provider")?,
            config: f.object("config")?,
            start: f.boolean("start")?.unwrap_or(false),
            restart_policy: f.choice("restartPolicy", POLICIES)?.unwrap_or_default(),
        })
    }
}

/// `PATCH /api/v1/environments/{id}`.
#[derive(Debug)]
pub(crate) struct PatchBody {
    config: Option<Map<String, Value>>,
    restart_policy: Option<RestartPolicy>,
}

impl FromObject for PatchBody {
    const FIELDS: &'static [&'static str] = &["config", "restartPolicy"];

    fn from_object(f: &mut Fields) -> Result<Self, String> {
        Ok(Self {
            config: f.object("config")?,
            restart_policy: f.choice("restartPolicy", POLICIES)?,
        })
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub(crate) async fn list(_: Authorized, State(s): State<AppState>) -> Json<Vec<EnvironmentView>> {
    Json(s.manager.list())
}

pub(crate) async fn create(
    _: Authorized,
    State(s): State<AppState>,
    Body(body): Body<CreateBody>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    let view = s
        .manager
        .create(CreateRequest {
            name: body.name,
            provider: body.provider,
            config: body.config.unwrap_or_default(),
            start: body.start,
            restart_policy: body.restart_policy,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

pub(crate) async fn get(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EnvironmentView>> {
    Ok(Json(s.manager.get(&id)?))
}

pub(crate) async fn patch(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<PatchBody>,
) -> ApiResult<Json<EnvironmentView>> {
    let view = s
        .manager
        .patch(&id, body.config, body.restart_policy)
        .await?;
    Ok(Json(view))
}

pub(crate) async fn delete(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn start(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    let view = s.manager.set_desired(&id, DesiredState::Running).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

pub(crate) async fn stop(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    let view = s.manager.set_desired(&id, DesiredState::Stopped).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

pub(crate) async fn restart(
    _: Authorized,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<EnvironmentView>)> {
    let view = s.manager.restart(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}
