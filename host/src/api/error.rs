//! The one error type of the API: `{"error": {"code", "message"}}` with a fitting status.
//! Every code is an [`ErrorCode`], which knows its status and meaning; the OpenAPI
//! spec's code list and its table of statuses are made from it.

use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::client_text;
use crate::lifecycle::LifecycleError;
use crate::store::{StorageProblem, StoreError};
use crate::tenancy::{MissingScope, TenancyError};

/// What went wrong, for programs; each code has one HTTP status (the runtime
/// WebSocket's `410` for a stopped environment, with code `conflict`, is the one
/// exception).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    /// 400.
    InvalidRequest,
    /// 400.
    InvalidJson,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 403.
    MissingScope,
    /// 404.
    NotFound,
    /// 409.
    Conflict,
    /// 409.
    Stopped,
    /// 413.
    BodyTooLarge,
    /// 415.
    UnsupportedMediaType,
    /// 429.
    TooManyFailures,
    /// 429.
    QuotaExceeded,
    /// 429.
    TooManyConnections,
    /// 500.
    StoreError,
    /// 500.
    InternalError,
    /// 500.
    AuditFailed,
    /// 507.
    StorageFull,
    /// 503.
    StorageUnavailable,
    /// 503.
    ClusterUnavailable,
    /// 502.
    HostUnreachable,
    /// 503.
    ServerBusy,
}

impl ErrorCode {
    /// Every code, in the order the docs list them.
    pub(crate) const ALL: [ErrorCode; 21] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidJson,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::MissingScope,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Stopped,
        ErrorCode::BodyTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::TooManyFailures,
        ErrorCode::QuotaExceeded,
        ErrorCode::TooManyConnections,
        ErrorCode::StoreError,
        ErrorCode::InternalError,
        ErrorCode::AuditFailed,
        ErrorCode::StorageFull,
        ErrorCode::StorageUnavailable,
        ErrorCode::ClusterUnavailable,
        ErrorCode::HostUnreachable,
        ErrorCode::ServerBusy,
    ];

    /// The code as sent.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::MissingScope => "missing_scope",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Stopped => "stopped",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::TooManyFailures => "too_many_failures",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::StoreError => "store_error",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::AuditFailed => "audit_failed",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::HostUnreachable => "host_unreachable",
            ErrorCode::ServerBusy => "server_busy",
        }
    }

    /// The HTTP status it is answered with.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::MissingScope => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::Stopped => StatusCode::CONFLICT,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::TooManyFailures
            | ErrorCode::QuotaExceeded
            | ErrorCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::StoreError | ErrorCode::InternalError | ErrorCode::AuditFailed => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::HostUnreachable => StatusCode::BAD_GATEWAY,
            ErrorCode::StorageUnavailable
            | ErrorCode::ClusterUnavailable
            | ErrorCode::ServerBusy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What leads to it, in a sentence (the spec's table and `docs/rest.md`).
    pub(crate) fn meaning(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => {
                "The body is not a JSON object, or a field or query value is missing, unknown, given twice (the `Authorization` header too), of the wrong type or out of range (a name breaking the name rule, `config` over 256 KiB or nested more than 32 levels deep, an unknown scope, a provider that is not loaded, a component that does not load); the message names it."
            }
            ErrorCode::InvalidJson => "The request body is not valid JSON.",
            ErrorCode::Unauthorized => {
                "No token, or one that is unknown, revoked, rotated away or expired; a ticket unknown, used or expired; a runtime token that is not the current start's of an existing environment (all read `invalid runtime token`)."
            }
            ErrorCode::Forbidden => {
                "A token limited to named environments tried to create one (provisioning one through a template is `invalid_request`)."
            }
            ErrorCode::MissingScope => {
                "The token lacks the scope the route needs; the message names it."
            }
            ErrorCode::NotFound => {
                "No such environment, token, provider, template, docs asset or route; someone else's environment or token is answered exactly the same way."
            }
            ErrorCode::Conflict => {
                "The name is taken, the record is held back as invalid in `environments.json`, a template's provider is not loaded, or the operator token comes from `TETHER_API_TOKEN` and cannot be rotated. A runtime connecting to a stopped environment gets this code with 410."
            }
            ErrorCode::Stopped => {
                "Sent as an `error` frame before close 4015 (never as an HTTP answer): the environment was stopped on purpose; start it, or connect with `start=true`."
            }
            ErrorCode::BodyTooLarge => {
                "The body is larger than 2 MiB (64 MiB for `PUT /api/v1/providers/{name}`)."
            }
            ErrorCode::UnsupportedMediaType => {
                "A JSON body was sent without `Content-Type: application/json`, or a component without `application/wasm` (or `application/octet-stream`)."
            }
            ErrorCode::TooManyFailures => {
                "This address failed to authenticate too often; `Retry-After` says when to try again."
            }
            ErrorCode::QuotaExceeded => {
                "The change would take the owner past a `[tenancy]` limit (`max_environments`, `max_running`), a log follow its user past `max_connections` on this host (WebSockets are closed with 4016 instead), or the host past its 10,000 user tokens; the message names it, its value and the use."
            }
            ErrorCode::TooManyConnections => {
                "The caller's address (IPv6: its /64) holds `[server] max_connections_per_address` connections already: answered to any request, before routing, with `Retry-After: 1`, and the connection is closed. (An environment with its maximum of WebSocket connections is not answered this over HTTP: the WebSocket routes upgrade such a connection and close it with 4013.)"
            }
            ErrorCode::StoreError => {
                "The change could not be made durable (the records or tokens file)."
            }
            ErrorCode::InternalError => {
                "The host could not do its part (writing an installed component, say); the message says what."
            }
            ErrorCode::AuditFailed => {
                "The change was made but the audit log could not take it, or the log could not be read; the host logs why."
            }
            ErrorCode::StorageFull => {
                "The filesystem of the data directory is full: the change was not made and nothing stored was touched. `/healthz` shows `storage` (once the records journal meets it); changes are taken again by themselves once space is freed."
            }
            ErrorCode::StorageUnavailable => {
                "The filesystem of the data directory is read-only or fails: the change was not made and nothing stored was touched. `/healthz` shows `storage` (once the records journal meets it); changes are taken again by themselves once it can write."
            }
            ErrorCode::ClusterUnavailable => {
                "Cluster mode: this host cannot reach NATS right now, so it cannot say what the cluster holds (`GET /api/v1/cluster`), or a change counted against a user's limits could not be admitted across the cluster (NATS away, or another host admitting that user's change for over 5 s). Nothing was changed; try again."
            }
            ErrorCode::HostUnreachable => {
                "Cluster mode: an app connected to a host that does not run its environment, and the host that does could not be reached to bridge it there."
            }
            ErrorCode::ServerBusy => {
                "The host serves as many connections as it may (`[server] max_connections`, WebSockets included); the connection is closed after this answer. `Retry-After` says when to try again."
            }
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// The error.
    error: ErrorDetail,
}

/// One error: a code for programs, a message for people.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// What went wrong (see the table in the spec's description for each code's status).
    code: ErrorCode,
    /// What went wrong and, where there is one, what to do about it.
    message: String,
}

/// An API error.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// Seconds for a `Retry-After` header (throttled requests).
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with its code (which decides the status) and message.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 `too_many_failures`: this address failed to authenticate too often; it may
    /// try again after `secs` (also sent as `Retry-After`).
    pub(crate) fn throttled(message: impl Into<String>, secs: u64) -> Self {
        let mut e = Self::new(ErrorCode::TooManyFailures, message);
        e.retry_after = Some(secs);
        e
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The message, for the audit log.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// 503 `server_busy`: the host is at its `max_connections`; try again in a second.
    pub(crate) fn server_busy(max: usize) -> Self {
        let message =
            format!("the host is serving as many connections as it may ({max}); try again shortly");
        let mut e = Self::new(ErrorCode::ServerBusy, message);
        e.retry_after = Some(1);
        e
    }

    /// 429 `too_many_connections`: the caller's address holds its
    /// `max_connections_per_address`; try again once one of them closes.
    pub(crate) fn too_many_from_address(most: usize) -> Self {
        let message = format!(
            "this address holds as many connections as one address may ({most}); close one first"
        );
        let mut e = Self::new(ErrorCode::TooManyConnections, message);
        e.retry_after = Some(1);
        e
    }

    /// 503 `cluster_unavailable`.
    pub(crate) fn cluster_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ClusterUnavailable, message)
    }

    /// 404.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 401.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// 400.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 403 `forbidden`: the token may not do this, whatever its scopes.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// What the host running an environment answered an app bridged to it (its
    /// status, code and message as they were), or 502 `host_unreachable`.
    pub(crate) fn bridged(status: StatusCode, body: String) -> Self {
        let theirs = serde_json::from_str::<serde_json::Value>(&body).ok();
        let code = theirs
            .as_ref()
            .and_then(|v| v["error"]["code"].as_str())
            .and_then(|c| ErrorCode::ALL.into_iter().find(|k| k.as_str() == c));
        match code {
            Some(code) if status.is_client_error() || status.is_server_error() => {
                let message = theirs
                    .as_ref()
                    .and_then(|v| v["error"]["message"].as_str())
                    .unwrap_or_default();
                Self::new(code, crate::untrusted::logged(message)).with_status(status)
            }
            _ => Self::new(
                ErrorCode::HostUnreachable,
                format!(
                    "the host running this environment could not take the app ({status}): {}",
                    crate::untrusted::logged(&body)
                ),
            ),
        }
    }

    /// The same error with another status (the runtime WebSocket's 410, a bridged
    /// app's answer from the host running its environment).
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let message = match &e {
            // The records' files by name only: the client is not told where they are.
            LifecycleError::Store(store) => {
                format!(
                    "persisting the change failed: {}",
                    client_text::store(store)
                )
            }
            _ => e.to_string(),
        };
        match e {
            LifecycleError::NotFound(_)
            | LifecycleError::NoProvider(_)
            | LifecycleError::NoTemplate(_) => Self::not_found(message),
            LifecycleError::Invalid(_) => Self::bad_request(message),
            LifecycleError::Conflict(_) | LifecycleError::Elsewhere { .. } => {
                Self::new(ErrorCode::Conflict, message)
            }
            LifecycleError::Unauthorized(_) | LifecycleError::InvalidToken(_) => {
                Self::unauthorized(message)
            }
            LifecycleError::StoppedOnPurpose(_) => Self::new(ErrorCode::Stopped, message),
            LifecycleError::ProviderNotAllowed { .. } | LifecycleError::Forbidden(_) => {
                Self::forbidden(message)
            }
            LifecycleError::QuotaExceeded { .. } => Self::new(ErrorCode::QuotaExceeded, message),
            LifecycleError::TooManyConnections(_) => {
                Self::new(ErrorCode::TooManyConnections, message)
            }
            LifecycleError::Store(StoreError::Storage { problem, .. }) => {
                let code = match problem {
                    StorageProblem::Full => ErrorCode::StorageFull,
                    StorageProblem::ReadOnly | StorageProblem::Failing => {
                        ErrorCode::StorageUnavailable
                    }
                };
                Self::new(code, message)
            }
            LifecycleError::ClusterUnavailable(_) => Self::cluster_unavailable(message),
            LifecycleError::Store(_) => Self::new(ErrorCode::StoreError, message),
            LifecycleError::Internal(_) => Self::new(ErrorCode::InternalError, message),
        }
    }
}

impl From<MissingScope> for ApiError {
    fn from(e: MissingScope) -> Self {
        Self::new(ErrorCode::MissingScope, e.to_string())
    }
}

impl From<TenancyError> for ApiError {
    fn from(e: TenancyError) -> Self {
        let message = client_text::tenancy(&e);
        match e {
            TenancyError::Invalid(_) => Self::bad_request(message),
            TenancyError::NotFound(_) => Self::not_found(message),
            TenancyError::Forbidden(_) => Self::forbidden(message),
            TenancyError::Limit(_) => Self::new(ErrorCode::QuotaExceeded, message),
            TenancyError::Conflict(_) => Self::new(ErrorCode::Conflict, message),
            // A full or read-only disk is said as for the records.
            TenancyError::Io { source, .. } => match StorageProblem::of(&source) {
                StorageProblem::Full => Self::new(ErrorCode::StorageFull, message),
                StorageProblem::ReadOnly => Self::new(ErrorCode::StorageUnavailable, message),
                StorageProblem::Failing => Self::new(ErrorCode::StoreError, message),
            },
            TenancyError::File { .. } => Self::new(ErrorCode::StoreError, message),
        }
    }
}
