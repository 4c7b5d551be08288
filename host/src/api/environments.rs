//! `/api/v1/environments`: list, create, read, patch, delete, start, stop, restart.

use axum::Json;
use axum::extract::{FromRequest, Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ApiError, AppState, Authorized};
use crate::lifecycle::{CreateRequest, EnvironmentView};
use crate::store::{DesiredState, RestartPolicy};

/// JSON body whose rejections use the API's error shape.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct Body<T>(T);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    name: String,
    provider: String,
    #[serde(default)]
    config: Option<Map<String, Value>>,
    #[serde(default)]
    start: bool,
    #[serde(default, rename = "restartPolicy")]
    restart_policy: RestartPolicy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct PatchBody {
    #[serde(default)]
    config: Option<Map<String, Value>>,
    #[serde(default)]
    restart_policy: Option<RestartPolicy>,
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
