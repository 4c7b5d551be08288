//! The one error type of the API: `{"error": {"code", "message"}}` with a fitting status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::lifecycle::LifecycleError;
use crate::tenancy::{MissingScope, TenancyError};

/// An API error.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with its status, code and message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 404.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 400.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 403 `forbidden`: the token may not do this, whatever its scopes.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The same error with another status.
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let message = e.to_string();
        match e {
            LifecycleError::NotFound(_) | LifecycleError::NoProvider(_) => Self::not_found(message),
            LifecycleError::Invalid(_) => Self::bad_request(message),
            LifecycleError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            LifecycleError::Unauthorized(_) => Self::unauthorized(message),
            LifecycleError::TooManyConnections(_) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                message,
            ),
            LifecycleError::Store(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", message)
            }
        }
    }
}

impl From<MissingScope> for ApiError {
    fn from(e: MissingScope) -> Self {
        Self::new(StatusCode::FORBIDDEN, "missing_scope", e.to_string())
    }
}

impl From<TenancyError> for ApiError {
    fn from(e: TenancyError) -> Self {
        let message = e.to_string();
        match e {
            TenancyError::Invalid(_) => Self::bad_request(message),
            TenancyError::NotFound(_) => Self::not_found(message),
            TenancyError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            TenancyError::Io { .. } | TenancyError::File { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", message)
            }
        }
    }
}
