//! The HTTP API of the sandbox service (documented in `docs/sandbox-api.md`): the
//! router, the bearer-key check, the handlers over [`Registry`], and one error type
//! that every failure, bad JSON included, turns into `{"error": {"code", "message"}}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::sandboxes::{ProcessRequest, Registry, SandboxError};

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The sandboxes.
    pub(crate) registry: Registry,
    /// The bearer key every `/v1` request must present.
    pub(crate) api_key: Arc<str>,
    /// Sandbox deletes still to answer with a 500 (`--fail-deletes`), for testing a
    /// client's retries.
    pub(crate) fail_deletes: Arc<AtomicUsize>,
    /// Sandbox deletes still to leave unanswered until the service stops
    /// (`--hang-deletes`), for testing a client's timeouts.
    pub(crate) hang_deletes: Arc<AtomicUsize>,
    /// Cancelled when the service begins to stop.
    pub(crate) stopping: CancellationToken,
}

/// The service's routes: `/healthz` is open, everything under `/v1` needs the key.
pub(crate) fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/sandboxes", get(list).post(create))
        .route("/sandboxes/{id}", get(read).delete(delete))
        .route("/sandboxes/{id}/processes", axum::routing::post(start))
        .route(
            "/sandboxes/{id}/processes/{process}",
            get(read_process).delete(stop_process),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .nest("/v1", v1)
        .fallback(|| async { ApiError::NotFound("no such endpoint".to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Why a request failed, and how it is answered.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// No key, or the wrong one.
    Unauthorized,
    /// Malformed input.
    BadRequest(String),
    /// Something the service will not do.
    Forbidden(String),
    /// No such thing.
    NotFound(String),
    /// The path exists, the method does not.
    MethodNotAllowed,
    /// A limit is reached.
    TooMany(String),
    /// The machine failed.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer <key>)".to_owned(),
            ),
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method".to_owned(),
            ),
            Self::TooMany(m) => (StatusCode::TOO_MANY_REQUESTS, "limit_reached", m),
            Self::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        };
        let body = json!({"error": {"code": code, "message": message}});
        (status, Json(body)).into_response()
    }
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::NotFound(m) => Self::NotFound(m),
            SandboxError::Forbidden(m) => Self::Forbidden(m),
            SandboxError::Invalid(m) => Self::BadRequest(m),
            SandboxError::Limit(m) => Self::TooMany(m),
            SandboxError::Io(m) => Self::Internal(m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

/// `axum::Json` whose rejection is an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct JsonBody<T>(T);

async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok =
        presented.is_some_and(|key| bool::from(key.as_bytes().ct_eq(state.api_key.as_bytes())));
    if !ok {
        tracing::warn!(path = %request.uri().path(), "request without the right API key");
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

/// `POST /v1/sandboxes` body; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSandbox {
    #[serde(default)]
    labels: Map<String, Value>,
}

async fn create(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // An empty body is an empty request; anything else must be the JSON object.
    let body: CreateSandbox = if body.iter().all(u8::is_ascii_whitespace) {
        CreateSandbox::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    if let Some((key, _)) = body.labels.iter().find(|(_, v)| !v.is_string()) {
        return Err(ApiError::BadRequest(format!(
            "labels.{key} must be a string"
        )));
    }
    let sandbox = state.registry.create(body.labels)?;
    Ok((StatusCode::CREATED, Json(json!(sandbox))))
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    let (sandboxes, created, deleted) = state.registry.list();
    Json(json!({"sandboxes": sandboxes, "created": created, "deleted": deleted}))
}

async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.registry.get(&id)?)))
}

/// Takes one from `count` when it is above zero.
fn take_one(count: &AtomicUsize) -> bool {
    (count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))).is_ok()
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if take_one(&state.hang_deletes) {
        tracing::warn!(%id, "leaving this delete unanswered on purpose (--hang-deletes)");
        state.stopping.cancelled().await;
        return Err(ApiError::Internal("the service is stopping".to_owned()));
    }
    if take_one(&state.fail_deletes) {
        tracing::warn!(%id, "failing this delete on purpose (--fail-deletes)");
        return Err(ApiError::Internal(
            "deleting failed on purpose (--fail-deletes)".to_owned(),
        ));
    }
    state.registry.delete(&id).await?;
    Ok(Json(json!({"id": id, "status": "deleted"})))
}

/// `POST /v1/sandboxes/{id}/processes` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartProcess {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Map<String, Value>,
}

async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<StartProcess>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if body.command.trim().is_empty() {
        return Err(ApiError::BadRequest("command must not be empty".to_owned()));
    }
    let env = (body.env.into_iter())
        .map(|(key, value)| match value {
            Value::String(text) => Ok((key, text)),
            _ => Err(ApiError::BadRequest(format!("env.{key} must be a string"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let request = ProcessRequest {
        command: body.command,
        args: body.args,
        env,
    };
    let process = state.registry.start_process(&id, request)?;
    Ok((StatusCode::CREATED, Json(json!(process))))
}

async fn read_process(
    State(state): State<AppState>,
    Path((id, process)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.registry.process(&id, &process)?)))
}

async fn stop_process(
    State(state): State<AppState>,
    Path((id, process)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    state.registry.stop_process(&id, &process)?;
    Ok(Json(json!({"id": process, "status": "killed"})))
}
